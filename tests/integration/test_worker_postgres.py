"""Real `rnnlm worker` processes sharing one PostgreSQL job store, as workers on several hosts would."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from models.checkpoint import read_config
from service.jobs import JobStore

TINY = dict(emb=16, hidden=16, layers=1, epochs=1, max_vocab=300, train_tokens=2000, valid_tokens=800,
            batch_size=16, bptt=20, dropout=0.0, seed=1)


def start_worker(tools, url: str, tmp: Path, worker_id: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"{worker_id}.log"
    cmd = [sys.executable, "-m", "service.cli", "worker", "--jobs-db", url, "--checkpoints", str(tmp / "checkpoints"),
           "--runs-dir", str(tmp / "runs"), "--poll-interval", "0.1", "--threads", "1", "--worker-id", worker_id,
           *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=tools.clean_env(OMP_NUM_THREADS="1"), stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def test_four_worker_processes_never_run_a_job_twice(tmp_path, postgres, data_root, proc_tools):
    url = postgres.new_database()
    store = JobStore(url)
    workers = [start_worker(proc_tools, url, tmp_path, f"w{i}") for i in range(4)]
    try:
        for proc, log in workers:  # all four polling before the first job arrives
            proc_tools.wait_for(
                lambda log=log: "jobs from postgresql://" in log.read_text(), 120, "a worker", proc, log
            )
        jobs = [store.submit("train", f"m{i}", {"data": str(data_root / "wt2-400"), **TINY}) for i in range(8)]
        proc, log = workers[0]
        proc_tools.wait_for(lambda: all(store.get(j.id).finished for j in jobs), 300, "the jobs", proc, log)
    finally:
        for proc, _ in workers:
            proc_tools.stop(proc)
    runs_by_job: dict[str, list[str]] = {}
    for proc, log in workers:
        assert proc.returncode == 0, log.read_text()[-3000:]
        for job_id in re.findall(r"job (\w+): train 'm\d', attempt", log.read_text()):
            runs_by_job.setdefault(job_id, []).append(log.stem)
    assert sorted(runs_by_job) == sorted(j.id for j in jobs)
    assert all(len(ran) == 1 for ran in runs_by_job.values()), runs_by_job  # each job ran in one worker, once
    assert len({ran[0] for ran in runs_by_job.values()}) >= 2, runs_by_job  # and the workers shared them
    for job in jobs:
        done = store.get(job.id)
        assert (done.status, done.attempts, done.recoveries) == ("succeeded", 1, 0), done.error
        assert done.worker_id == runs_by_job[job.id][0]
        history = read_config(tmp_path / "checkpoints" / job.name)["history"]
        assert [h["epoch"] for h in history] == [1]  # trained once, not twice over
    assert store.counts()["succeeded"] == 8


def test_a_sigkilled_workers_job_is_finished_by_another(tmp_path, postgres, data_root, proc_tools):
    url = postgres.new_database()
    store = JobStore(url)
    epochs = 8
    # a short stale timeout, but long enough that a busy live worker is never taken for dead
    workers = {name: start_worker(proc_tools, url, tmp_path, name, "--stale-after", "4") for name in ("a", "b")}
    try:
        for proc, log in workers.values():  # both polling: whichever claims the job is killed, the other resumes it
            proc_tools.wait_for(
                lambda log=log: "jobs from postgresql://" in log.read_text(), 120, "a worker", proc, log
            )
        job = store.submit("train", "phoenix", {"data": str(data_root / "wt2-400"), **TINY, "emb": 32, "hidden": 32,
                                                "train_tokens": 15000, "epochs": epochs, "patience": 100})
        victim = proc_tools.wait_for(lambda: (j := store.get(job.id)).progress and j.progress.get("epoch")
                                     and j.worker_id, 120, "the first epoch")
        survivor = "b" if victim == "a" else "a"
        workers[victim][0].kill()  # SIGKILL: no chance to hand the job back
        workers[victim][0].wait()
        killed = store.get(job.id)
        assert (killed.status, killed.worker_id) == ("running", victim), "the job finished before the kill"
        done_epochs = killed.progress["epoch"]
        proc, log = workers[survivor]
        done = proc_tools.wait_for(lambda: (j := store.get(job.id)).finished and j, 300, "the job to finish", proc, log)
    finally:
        for proc, _ in workers.values():
            proc_tools.stop(proc)
    log = workers[survivor][1].read_text()
    assert (done.status, done.worker_id, done.attempts, done.recoveries) == ("succeeded", survivor, 2, 1), done.error
    assert "(resuming)" in log
    assert done.progress["resumed_from_epoch"] >= done_epochs >= 1
    assert "epoch 1/" not in log  # the survivor never trained epoch 1 again
    assert done.result["epochs_run"] == epochs
    history = read_config(tmp_path / "checkpoints" / "phoenix")["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
