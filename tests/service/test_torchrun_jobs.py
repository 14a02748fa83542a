"""Jobs on several processes: the worker runs them under torchrun (DDP, gloo on CPU) and follows them."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from models.versions import current_folder
from service.app import create_app
from service.jobs import JobStore
from service.settings import Settings
from service.worker import Worker

# a worker runs at most one process per core
two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for 2 processes")


@pytest.fixture
def store(job_settings: Settings) -> JobStore:
    return JobStore(job_settings.jobs_db, stale_after_s=30)


@pytest.fixture
def worker(store: JobStore, job_settings: Settings) -> Worker:
    return Worker(store, job_settings.checkpoints, data_roots=job_settings.data_roots, poll_interval_s=0.05,
                  worker_id="w1")


def _weights(checkpoints: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(current_folder(checkpoints / name) / "model.safetensors"))


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


@two_cores
def test_two_processes_train_the_same_model_as_one_with_the_same_global_batch(store, worker, job_settings, tiny_job):
    params = tiny_job(epochs=1, batch_size=8)
    one = store.submit("train", "one", params)
    two = store.submit("train", "two", {**params, "nproc": 2})
    assert worker.run(once=True) == 1 and worker.run(once=True) == 1
    for job in (one, two):
        done = store.get(job.id)
        assert done.status == "succeeded", done.error
    a, b = _weights(job_settings.checkpoints, "one"), _weights(job_settings.checkpoints, "two")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), key
    done = store.get(two.id)
    assert done.result["epochs_run"] == 1 and done.result["valid_ppl"] == pytest.approx(
        store.get(one.id).result["valid_ppl"], rel=1e-3)
    # the worker followed the ranks: the epoch's report is in the job's progress
    assert done.progress["epoch"] == 1 and [h["epoch"] for h in done.progress["history"]] == [1]
    assert not (Path(job_settings.jobs_db).parent / "runs" / two.id).exists()  # cleaned up as any finished job


@two_cores
def test_a_distill_job_runs_on_two_processes(store, worker, job_settings, tiny_job):
    params = {k: v for k, v in tiny_job(epochs=1, batch_size=8, nproc=2).items() if k != "max_vocab"}
    job = store.submit("distill", "student2", {**params, "teacher": "teacher"})
    worker.run(once=True)
    done = store.get(job.id)
    assert done.status == "succeeded", done.error
    assert done.result["epochs_run"] == 1 and (job_settings.checkpoints / "student2").is_dir()


@two_cores
def test_cancelling_a_multi_process_job_ends_every_rank(store, worker, job_settings, tiny_job, wait_for):
    job = store.submit("train", "long", tiny_job(epochs=200, train_tokens=20000, nproc=2))
    thread = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
    thread.start()
    wait_for(lambda: (store.get(job.id).progress or {}).get("step"), timeout=120, what="a step report from rank 0")
    launch = str(Path(job_settings.jobs_db).parent / "runs" / job.id / "launch.json")
    assert len(_processes_mentioning(launch)) >= 3  # torchrun and its two ranks
    store.cancel(job.id)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert store.get(job.id).status == "cancelled"
    wait_for(lambda: not _processes_mentioning(launch), timeout=30, what="the ranks to end")


@two_cores
def test_a_stopped_worker_hands_the_job_back_and_the_next_resumes_it_from_its_last_epoch(store, worker, job_settings,
                                                                                       tiny_job, wait_for):
    # small steps (about a thousand an epoch), so an epoch lasts long enough to stop the worker inside the next
    job = store.submit("train", "resumed", tiny_job(epochs=3, train_tokens=12000, nproc=2, batch_size=2, bptt=5))
    thread = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
    thread.start()
    wait_for(lambda: (store.get(job.id).progress or {}).get("epoch") == 1, timeout=180, what="epoch 1 of 3")
    worker.stop()  # as on SIGTERM: the ranks are ended, the job goes back to the queue
    thread.join(timeout=60)
    assert not thread.is_alive() and store.get(job.id).status == "queued"
    launch = str(Path(job_settings.jobs_db).parent / "runs" / job.id / "launch.json")
    assert not _processes_mentioning(launch)
    again = Worker(store, job_settings.checkpoints, data_roots=job_settings.data_roots, poll_interval_s=0.05,
                   worker_id="w2")
    assert again.run(once=True) == 1
    done = store.get(job.id)
    assert done.status == "succeeded", done.error
    assert done.progress["resumed_from_epoch"] >= 1 and done.progress["attempt"] == 2
    assert [h["epoch"] for h in done.progress["history"]] == [1, 2, 3]


@two_cores
def test_a_killed_worker_takes_its_ranks_with_it(store, job_settings, tiny_job, proc_tools, tmp_path):
    job = store.submit("train", "orphan", tiny_job(epochs=200, train_tokens=20000, nproc=2))
    env = proc_tools.clean_env(OMP_NUM_THREADS="1", RNNLM_DATA_ROOTS=str(job_settings.data_roots[0]))
    with open(tmp_path / "worker.log", "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--checkpoints",
                                   str(job_settings.checkpoints), "--jobs-db", str(job_settings.jobs_db)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        proc_tools.wait_for(lambda: (store.get(job.id).progress or {}).get("step"), 180, "a step report",
                            worker, tmp_path / "worker.log")
        launch = str(Path(job_settings.jobs_db).parent / "runs" / job.id / "launch.json")
        assert len(_processes_mentioning(launch)) >= 3
        worker.kill()  # no chance to clean up: torchrun gets SIGTERM from the kernel and ends the ranks
        worker.wait()
        proc_tools.wait_for(lambda: not _processes_mentioning(launch), 60, "the ranks to end")
    finally:
        proc_tools.stop(worker)
    assert store.get(job.id).status == "running"  # until its heartbeat goes stale and another worker takes it


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_failing_rank_fails_the_job_with_its_message(store, worker, tiny_job):
    job = store.submit("train", "bad", tiny_job(nproc=2, device="cuda"))  # no GPU here: every rank refuses
    worker.run(once=True)
    done = store.get(job.id)
    assert done.status == "failed"
    assert "cuda" in done.error.lower() and "torchrun exited" not in done.error, done.error


def test_a_job_asking_for_more_processes_than_the_worker_has_cores_fails_before_starting(store, worker, tiny_job):
    cores = len(os.sched_getaffinity(0))
    job = store.submit("train", "wide", tiny_job(nproc=cores + 1, batch_size=16 * (cores + 1)))
    worker.run(once=True)
    done = store.get(job.id)
    assert done.status == "failed" and done.error == f"nproc {cores + 1} is more than this worker's {cores} CPUs"


@pytest.mark.parametrize("body, param", [
    ({"nproc": 3, "batch_size": 16}, "nnodes"),       # 16 rows do not split over 3 processes
    ({"nproc": 0}, "nproc"),
    ({"nproc": 65}, "nproc"),
    ({"nnodes": 2}, "rdzv_endpoint"),                 # the other nodes need somewhere to join
    ({"rdzv_endpoint": "10.0.0.5:29400"}, "rdzv_endpoint"),
    ({"nnodes": 2, "rdzv_endpoint": "no port"}, "rdzv_endpoint"),
    ({"nproc": "2"}, "nproc"),
])
def test_bad_process_layouts_are_refused_at_submission(job_settings, tiny_job, body, param):
    with TestClient(create_app(job_settings)) as api:
        r = api.post("/v1/jobs", json={"type": "train", "name": "m", **tiny_job(), **body})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert set(error) == {"type", "message", "param"} and error["param"] == param, error


def test_a_multi_node_job_is_accepted_with_its_layout(job_settings, tiny_job):
    with TestClient(create_app(job_settings)) as api:
        r = api.post("/v1/jobs", json={"type": "train", "name": "m", **tiny_job(nproc=2, nnodes=2),
                                       "rdzv_endpoint": "10.0.0.5:29400"})
        assert r.status_code == 202, r.text
        job = api.get(f"/v1/jobs/{r.json()['id']}").json()
    assert job["status"] == "queued"
    assert (job["params"]["nproc"], job["params"]["nnodes"], job["params"]["rdzv_endpoint"]) == (2, 2, "10.0.0.5:29400")
