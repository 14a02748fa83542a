"""The worker in-process: training and distilling jobs, publishing, failures, resume, progress, metrics.

The job store's own contract (claims, fencing, stale-job recovery, cancel) is tested on both backends in
test_job_store.py."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from models.checkpoint import read_config
from service.jobs import JobStore
from service.metrics import JobCounts
from service.settings import Settings
from service.worker import JobRun, Worker


@pytest.fixture
def store(job_settings: Settings) -> JobStore:
    return JobStore(job_settings.jobs_db, stale_after_s=30)


@pytest.fixture
def worker(store: JobStore, job_settings: Settings) -> Worker:
    return Worker(store, job_settings.checkpoints, poll_interval_s=0.05, worker_id="w1")


def test_worker_trains_publishes_and_reports(store, worker, job_settings, tiny_job):
    job = store.submit("train", "fresh", tiny_job())
    assert worker.run(once=True) == 1
    done = store.get(job.id)
    assert done.status == "succeeded", done.error
    assert done.result["model"] == "fresh" and done.result["epochs_run"] == 2
    assert done.progress["epoch"] == 2 and done.progress["resumed_from_epoch"] == 0
    assert done.progress["step"] > 0 and done.progress["valid_ppl"] > 1
    assert done.progress["step"] == done.progress["total_steps"]
    assert [h["epoch"] for h in done.progress["history"]] == [1, 2]
    assert all(h["train_loss"] > 0 and h["valid_ppl"] > 1 for h in done.progress["history"])
    meta = read_config(job_settings.checkpoints / "fresh")
    assert meta["name"] == "fresh" and meta["provenance"]["train_config"]["emb"] == 16
    assert not Path(done.run_dir).exists()  # run state is removed once nothing can resume it
    assert worker.run(once=True) == 0  # empty queue: --once returns at once
    assert REGISTRY.get_sample_value("rnnlm_worker_jobs_total", {"type": "train", "outcome": "succeeded"}) >= 1
    assert REGISTRY.get_sample_value("rnnlm_training_epoch", {"type": "train"}) == 2
    assert REGISTRY.get_sample_value("rnnlm_training_valid_perplexity", {"type": "train"}) > 1
    families = list(JobCounts(store).collect())
    counts = {s.labels["status"]: s.value for s in families[0].samples}
    assert counts["succeeded"] == 1 and counts["queued"] == 0


def test_failure_is_one_line_and_the_worker_goes_on(store, worker, job_settings, tiny_job, tmp_path, wait_for):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.txt").write_bytes(b"\x00\x01binary")
    bad = store.submit("train", "bad", tiny_job(data=str(broken)))
    good = store.submit("train", "good", tiny_job(epochs=1))
    thread = threading.Thread(target=worker.run)  # the loop, as `rnnlm worker` runs it
    thread.start()
    wait_for(lambda: store.get(good.id).finished, 60, "the second job")
    worker.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    failed = store.get(bad.id)
    assert failed.status == "failed" and "binary" in failed.error and "\n" not in failed.error
    assert store.get(good.id).status == "succeeded"
    assert not (job_settings.checkpoints / "bad").exists()


def test_name_taken_meanwhile_fails_without_touching_the_model(store, worker, job_settings, tiny_job):
    job = store.submit("train", "teacher", tiny_job())
    before = (job_settings.checkpoints / "teacher" / "model.safetensors").read_bytes()
    worker.run(once=True)
    failed = store.get(job.id)
    assert failed.status == "failed" and "already exists" in failed.error
    assert (job_settings.checkpoints / "teacher" / "model.safetensors").read_bytes() == before


def test_distill_job_records_its_teacher(store, worker, job_settings, tiny_job):
    params = tiny_job(max_vocab=None, teacher="teacher", temperature=2.0, alpha=0.5, kd_fraction=1.0)
    job = store.submit("distill", "pupil", params)
    worker.run(once=True)
    assert store.get(job.id).status == "succeeded", store.get(job.id).error
    provenance = read_config(job_settings.checkpoints / "pupil")["provenance"]
    assert provenance["teacher"] == "teacher" and provenance["distillation"]["alpha"] == 0.5


def test_stopped_worker_hands_the_job_back_and_it_resumes(store, job_settings, tiny_job, monkeypatch, wait_for):
    job = store.submit("train", "long", tiny_job(epochs=8, patience=100))
    first = Worker(store, job_settings.checkpoints, poll_interval_s=0.05, worker_id="first")
    thread = threading.Thread(target=first.run)
    thread.start()
    wait_for(lambda: (store.get(job.id).progress or {}).get("epoch", 0) >= 2, 60, "two epochs")
    first.stop()  # what SIGTERM does
    thread.join(timeout=30)
    released = store.get(job.id)
    assert released.status == "queued" and released.worker_id is None
    stopped_at = released.progress["epoch"]
    assert stopped_at < 8, "the job finished before the worker was stopped; make it longer"
    assert not (job_settings.checkpoints / "long").exists()  # nothing is published before success

    epochs_seen = []
    on_epoch = JobRun.on_epoch

    def spy(self, report):
        epochs_seen.append(report.epoch)
        on_epoch(self, report)
    monkeypatch.setattr(JobRun, "on_epoch", spy)
    Worker(store, job_settings.checkpoints, poll_interval_s=0.05, worker_id="second").run(once=True)
    done = store.get(job.id)
    assert done.status == "succeeded" and done.attempts == 2
    assert epochs_seen == list(range(stopped_at + 1, 9))  # continued after the last saved epoch
    assert done.progress["resumed_from_epoch"] == stopped_at
    assert done.result["epochs_run"] == 8
    history = read_config(job_settings.checkpoints / "long")["history"]  # up to the best epoch
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1)) and len(history) > stopped_at


def test_progress_shows_steps_loss_and_eta_during_the_first_epoch(store, job_settings, tiny_job, wait_for):
    job = store.submit("train", "watched", tiny_job(epochs=50, patience=100, train_tokens=20000))
    worker = Worker(store, job_settings.checkpoints, poll_interval_s=0.05, worker_id="w")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        progress = wait_for(lambda: (p := store.get(job.id).progress) and p.get("epoch_step") and p, 60,
                            "progress within the first epoch")
        assert progress["epochs"] == 50 and len(progress.get("history", [])) == progress["epoch"] < 50
        assert 0 < progress["epoch_step"] <= progress["epoch_steps"]
        assert 0 < progress["step"] <= progress["total_steps"] and progress["epoch_steps"] > 0
        assert progress["loss"] > 0 and progress["eta_s"] > 0 and progress["tokens_per_s"] > 0
        assert progress["resumed_from_epoch"] == 0 and progress["attempt"] == 1
    finally:
        worker.stop()
        thread.join(timeout=60)


def test_job_settings_reach_the_trainer(store, worker, job_settings, tiny_job):
    params = tiny_job(epochs=1, cutoffs=[100, 300], weight_decay=1e-6, style="ptb", context_dropout=0.1)
    job = store.submit("train", "shaped", params)
    worker.run(once=True)
    assert store.get(job.id).status == "succeeded", store.get(job.id).error
    meta = read_config(job_settings.checkpoints / "shaped")
    train_config = meta["provenance"]["train_config"]
    assert train_config["weight_decay"] == 1e-6 and train_config["context_dropout"] == 0.1
    assert meta["model"]["cutoffs"] == [100, 300] and meta["tokenizer"]["style"] == "ptb"
    grown = store.submit("train", "grown", tiny_job(epochs=1, init="teacher"))
    worker.run(once=True)
    assert store.get(grown.id).status == "succeeded", store.get(grown.id).error
    assert read_config(job_settings.checkpoints / "grown")["provenance"]["init"]["name"] == "teacher"


def test_a_job_with_a_missing_init_model_fails_in_one_line(store, worker, tiny_job):
    job = store.submit("train", "orphan", tiny_job(init="ghost"))
    worker.run(once=True)
    failed = store.get(job.id)
    assert failed.status == "failed" and "ghost" in failed.error and "\n" not in failed.error
