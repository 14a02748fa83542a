"""Real processes: `rnnlm serve --with-worker` end to end over HTTP, and a SIGKILLed worker's job resuming."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

from models.checkpoint import read_config
from service.jobs import JobStore

TINY = dict(emb=16, hidden=16, layers=1, epochs=2, max_vocab=500, train_tokens=5000, valid_tokens=2000,
            batch_size=16, bptt=20, dropout=0.0, seed=1)


def env(tools) -> dict[str, str]:
    """The worker's environment: none of our RNNLM_* settings, one thread."""
    return tools.clean_env(OMP_NUM_THREADS="1")


def test_serve_with_worker_trains_and_serves_a_new_model(tmp_path, data_root, proc_tools, serve, processes):
    metrics_port = proc_tools.free_port()
    wait_for = proc_tools.wait_for
    settings = dict(OMP_NUM_THREADS="1", RNNLM_DATA_ROOTS=str(data_root), RNNLM_RELOAD_INTERVAL_S="0.5",
                    RNNLM_WORKER_POLL_INTERVAL_S="0.2", RNNLM_WORKER_METRICS_PORT=str(metrics_port))
    # no model yet, so /ready says 503: wait for /health
    with serve(tmp_path, "--with-worker", env=settings, wait="/health", stop_timeout_s=60) as server:
        base, proc, log = server.url, server.proc, server.log
        body = {"type": "train", "name": "fresh", "data": str(data_root / "wt2-400"), **TINY}
        r = httpx.post(f"{base}/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job_url = f"{base}/v1/jobs/{r.json()['id']}"
        job = wait_for(lambda: (j := httpx.get(job_url).json())["status"] in ("succeeded", "failed", "cancelled")
                       and j, 120, "the job", proc, log)
        assert job["status"] == "succeeded", job["error"]
        wait_for(lambda: httpx.get(f"{base}/v1/models/fresh").status_code == 200, 30, "the new model", proc, log)
        r = httpx.post(f"{base}/v1/score", json={"model": "fresh", "texts": ["The game was released ."]})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "fresh" and r.json()["results"][0]["num_tokens"] > 0
        worker_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text  # the worker's own exporter
        assert 'rnnlm_worker_jobs_total{outcome="succeeded",type="train"} 1.0' in worker_metrics
        assert 'rnnlm_jobs{status="succeeded"} 1.0' in worker_metrics
        assert 'rnnlm_training_epoch{type="train"} 2.0' in worker_metrics
        workers = processes.live_children(proc.pid)
        assert len(workers) == 1
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status reports the signal
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "stopping after the current step" in log.read_text()  # the worker got SIGTERM from the server
    # the worker went with it
    assert processes.live_children(proc.pid) == [] and not Path(f"/proc/{workers[0]}").exists()


def test_sigkilled_worker_job_resumes_from_its_last_epoch(tmp_path, data_root, proc_tools, processes):
    wait_for = proc_tools.wait_for
    db, checkpoints = tmp_path / "jobs.db", tmp_path / "checkpoints"
    store = JobStore(db)
    epochs = 8
    job = store.submit("train", "phoenix", {"data": str(data_root / "wt2-400"), **TINY, "emb": 32, "hidden": 32,
                                            "train_tokens": 15000, "epochs": epochs, "patience": 100})
    worker = processes.rnnlm("worker", "--checkpoints", str(checkpoints), "--jobs-db", str(db),
                             "--poll-interval", "0.1", "--stale-after", "1", "--threads", "1")
    first_log = tmp_path / "first.log"
    with open(first_log, "w") as out:
        first = subprocess.Popen(worker, env=env(proc_tools), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (store.get(job.id).progress or {}).get("epoch"), 90, "the first epoch", first, first_log)
    finally:
        first.kill()  # SIGKILL: no chance to hand the job back
        first.wait()
    killed = store.get(job.id)
    assert killed.status == "running", "the worker should have died mid-job"
    done_epochs = killed.progress["epoch"]
    assert done_epochs < epochs, "the job finished before the kill; make it longer"
    time.sleep(1.5)  # the dead worker's heartbeat goes stale

    second = subprocess.run([*worker, "--once"], env=env(proc_tools), capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    done = store.get(job.id)
    assert done.status == "succeeded", (done.error, second.stderr)
    assert (done.attempts, done.recoveries) == (2, 1)
    resumed_from = done.progress["resumed_from_epoch"]
    assert resumed_from >= done_epochs >= 1  # state is saved before progress is, so it may be one ahead
    assert "(resuming)" in second.stderr
    assert "epoch 1/" not in second.stderr  # the new worker never trained epoch 1 again
    assert f"epoch {resumed_from + 1}/{epochs}" in second.stderr
    assert done.result["epochs_run"] == epochs
    history = read_config(checkpoints / "phoenix")["history"]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
