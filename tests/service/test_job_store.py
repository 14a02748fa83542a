"""The job store contract, run against both backends: SQLite and a real PostgreSQL.

Claims, heartbeats, fencing, stale-job recovery, cancel, idempotent submission and schema migrations
behave the same whichever store `RNNLM_JOBS_DB` names.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.jobs import (
    MAX_RECOVERIES,
    IdempotencyKeyReused,
    JobConflict,
    JobNotFound,
    JobStore,
    SchemaTooNew,
    SqliteJobStore,
    parse_location,
)
from service.settings import Settings


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> str:
    """Where a fresh, empty job store lives: a SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store(location) -> JobStore:
    return JobStore(location, stale_after_s=30)


def test_the_location_picks_the_backend(location):
    store = JobStore(location)
    assert store.backend == ("postgresql" if location.startswith("postgresql://") else "sqlite")
    assert isinstance(store, JobStore)
    assert not store.exists()  # opening creates nothing
    store.submit("train", "m", {"data": "x"})
    assert store.exists()


def test_a_sqlite_store_is_wal_and_made_with_its_folder(tmp_path):
    store = JobStore(tmp_path / "sub" / "jobs.db")
    assert not store.exists()  # constructing a store (as create_app does) creates nothing
    store.submit("train", "m", {"data": "x"})
    assert store.exists()
    with sqlite3.connect(tmp_path / "sub" / "jobs.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("text, expected", [
    ("jobs.db", ("sqlite", "jobs.db")),
    ("/var/lib/rnnlm/jobs.db", ("sqlite", "/var/lib/rnnlm/jobs.db")),
    ("sqlite:///jobs/jobs.db", ("sqlite", "jobs/jobs.db")),
    ("sqlite:////var/lib/jobs.db", ("sqlite", "/var/lib/jobs.db")),
    ("postgresql://rnnlm@db:5432/jobs", ("postgresql", "postgresql://rnnlm@db:5432/jobs")),
    ("postgres://rnnlm@db/jobs", ("postgresql", "postgres://rnnlm@db/jobs")),
])
def test_locations(text, expected):
    assert parse_location(text) == expected


@pytest.mark.parametrize("text, fragment", [("mysql://db/jobs", "scheme 'mysql'"), ("sqlite://jobs.db", "sqlite:///"),
                                            ("", "empty")])
def test_a_bad_location_says_what_it_takes(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_location(text)
    with pytest.raises(ValueError, match=fragment):
        Settings(jobs_db=text)


def test_the_setting_keeps_a_path_a_path_and_a_url_a_url(tmp_path):
    assert Settings(jobs_db=str(tmp_path / "j.db")).jobs_db == tmp_path / "j.db"
    assert Settings(jobs_db=f"sqlite:///{tmp_path}/j.db").jobs_db == tmp_path / "j.db"
    url = "postgresql://rnnlm:pw@db:5432/jobs"
    assert Settings(jobs_db=url).jobs_db == url
    assert isinstance(JobStore(tmp_path / "j.db"), SqliteJobStore)


def test_submit_get_list_and_count(store):
    a = store.submit("train", "a", {"data": "x", "epochs": 2})
    b = store.submit("distill", "b", {"teacher": "a"})
    assert (a.status, a.attempts, a.recoveries, a.cancel_requested, a.params) == ("queued", 0, 0, False,
                                                                                 {"data": "x", "epochs": 2})
    assert store.get(a.id) == a
    assert [j.id for j in store.list_jobs()] == [b.id, a.id]  # newest first
    assert [j.id for j in store.list_jobs(status="queued", limit=1)] == [b.id]
    assert store.list_jobs(status="running") == []
    assert store.counts() == {"queued": 2, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    with pytest.raises(JobNotFound):
        store.get("nope")
    with pytest.raises(ValueError, match="unknown job type"):
        store.submit("evaluate", "c", {})


def test_one_active_job_per_model_name(store):
    first = store.submit("train", "m", {})
    with pytest.raises(JobConflict, match=first.id):
        store.submit("train", "m", {})
    with pytest.raises(JobConflict, match=first.id):
        store.submit("distill", "m", {})
    store.cancel(first.id)
    assert store.submit("train", "m", {}).status == "queued"  # a finished job no longer blocks the name


def test_idempotent_submission(store):
    job = store.submit("train", "m", {"e": 1}, idempotency_key="k1", request_hash="h1")
    again = store.submit("train", "m", {"e": 1}, idempotency_key="k1", request_hash="h1")
    assert again.id == job.id and again.replayed and not job.replayed
    assert store.find_idempotent("k1", "h1").id == job.id
    assert store.find_idempotent("k2", "h1") is None
    with pytest.raises(IdempotencyKeyReused, match="k1"):
        store.submit("train", "other", {}, idempotency_key="k1", request_hash="h2")
    assert len(store.list_jobs()) == 1


def test_concurrent_submits_of_one_key_make_one_job(location):
    made, start = [], threading.Barrier(6)

    def submit() -> None:
        own = JobStore(location)
        start.wait()
        made.append(own.submit("train", "m", {}, idempotency_key="same", request_hash="h").id)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(made) == 6 and len(set(made)) == 1
    assert len(JobStore(location).list_jobs()) == 1


def test_concurrent_workers_never_claim_the_same_job(location):
    ids = {JobStore(location).submit("train", f"m{i}", {"i": i}).id for i in range(12)}
    claimed: list[tuple[str, str]] = []
    lock, start = threading.Lock(), threading.Barrier(6)

    def claimer(worker_id: str) -> None:
        own = JobStore(location)  # its own connections, as a separate process would have
        start.wait()
        while (job := own.claim(worker_id)) is not None:
            with lock:
                claimed.append((job.id, worker_id))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(job_id for job_id, _ in claimed) == sorted(ids)  # each job exactly once
    store = JobStore(location)
    for job_id, worker_id in claimed:
        job = store.get(job_id)
        assert (job.status, job.worker_id, job.attempts) == ("running", worker_id, 1)


def test_claims_take_the_oldest_job_first(store):
    jobs = [store.submit("train", name, {}) for name in "abc"]
    assert [store.claim("w").id for _ in jobs] == [j.id for j in jobs]
    assert store.claim("w") is None


def test_heartbeat_progress_and_finish(store):
    job = store.submit("train", "m", {})
    claimed = store.claim("w1")
    assert (claimed.status, claimed.worker_id, claimed.attempts) == ("running", "w1", 1)
    assert claimed.started_at is not None and claimed.heartbeat_at is not None
    assert store.set_run_dir(job.id, "w1", "/runs/x")
    beat = store.heartbeat(job.id, "w1", {"epoch": 1, "loss": 5.5})
    assert beat.owned and not beat.cancel_requested
    seen = store.get(job.id)
    assert (seen.progress, seen.run_dir) == ({"epoch": 1, "loss": 5.5}, "/runs/x")
    assert seen.heartbeat_at >= claimed.heartbeat_at
    assert not store.finish(job.id, "w2", "succeeded")  # not its job
    assert store.finish(job.id, "w1", "succeeded", result={"valid_ppl": 123.4})
    done = store.get(job.id)
    assert (done.status, done.result, done.finished) == ("succeeded", {"valid_ppl": 123.4}, True)
    assert done.finished_at >= done.started_at
    assert not store.heartbeat(job.id, "w1").owned  # finished: no longer running
    with pytest.raises(ValueError, match="final status"):
        store.finish(job.id, "w1", "running")


def test_cancel_queued_running_and_finished(store):
    queued = store.submit("train", "q", {})
    assert store.cancel(queued.id).status == "cancelled"
    running = store.submit("train", "r", {})
    store.claim("w")
    flagged = store.cancel(running.id)
    assert (flagged.status, flagged.cancel_requested) == ("running", True)
    assert store.heartbeat(running.id, "w").cancel_requested  # the worker learns it at its next beat
    assert store.finish(running.id, "w", "cancelled")
    with pytest.raises(JobConflict, match="already cancelled"):
        store.cancel(running.id)
    with pytest.raises(JobNotFound):
        store.cancel("nope")


def test_release_puts_the_job_back(store):
    job = store.submit("train", "m", {})
    store.claim("w1")
    assert store.release(job.id, "w1")
    assert not store.release(job.id, "w1")
    again = store.claim("w2")
    assert (again.id, again.worker_id, again.attempts, again.recoveries) == (job.id, "w2", 2, 0)


def test_a_stale_job_is_requeued_and_its_old_worker_fenced_off(location):
    store = JobStore(location, stale_after_s=0.3)
    job = store.submit("train", "m", {})
    first = store.claim("dead")
    assert store.claim("other") is None  # still fresh: not taken
    time.sleep(0.5)  # "dead" stops heartbeating
    again = store.claim("alive")
    assert (again.id, again.worker_id, again.attempts, again.recoveries) == (job.id, "alive", 2, 1)
    assert again.started_at == first.started_at
    assert not store.heartbeat(job.id, "dead").owned  # the zombie learns it lost the job ...
    assert not store.finish(job.id, "dead", "succeeded")  # ... and cannot record an outcome
    assert not store.set_run_dir(job.id, "dead", "/elsewhere")
    assert store.get(job.id).worker_id == "alive"
    assert store.heartbeat(job.id, "alive").owned  # the new owner carries on and records the outcome
    assert store.finish(job.id, "alive", "succeeded", result={"model": "m"})
    assert store.get(job.id).status == "succeeded"


def test_stale_jobs_are_recovered_once_however_many_workers_look(location):
    store = JobStore(location, stale_after_s=30)  # nothing goes stale while "dead" claims them all
    ids = {store.submit("train", f"m{i}", {}).id for i in range(6)}
    while store.claim("dead") is not None:
        pass
    time.sleep(0.4)
    recovered: list[str] = []
    lock, start = threading.Lock(), threading.Barrier(4)

    def look() -> None:
        own = JobStore(location, stale_after_s=0.2)
        start.wait()
        found = own.recover_stale()
        with lock:
            recovered.extend(found)

    threads = [threading.Thread(target=look) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert set(recovered) == ids
    assert {j.recoveries for j in store.list_jobs()} == {1}  # not once per worker that looked


def test_a_job_that_keeps_killing_its_worker_fails(location):
    store = JobStore(location, stale_after_s=0.05)
    job = store.submit("train", "m", {})
    for i in range(MAX_RECOVERIES + 1):
        assert store.claim(f"w{i}").id == job.id
        time.sleep(0.1)
    assert store.claim("last") is None
    failed = store.get(job.id)
    assert (failed.status, failed.worker_id) == ("failed", None)
    assert failed.error == f"the worker running this job died {MAX_RECOVERIES + 1} times"


def test_a_stale_job_asked_to_cancel_is_cancelled(location):
    store = JobStore(location, stale_after_s=0.1)
    job = store.submit("train", "m", {})
    store.claim("dead")
    store.cancel(job.id)
    time.sleep(0.2)
    assert store.recover_stale() == [job.id]
    assert store.get(job.id).status == "cancelled"
    again = store.submit("train", "m", {})  # found by a worker's claim instead: cancelled, not handed out
    store.claim("dead")
    store.cancel(again.id)
    time.sleep(0.2)
    assert store.claim("w2") is None
    assert store.get(again.id).status == "cancelled"


def test_a_dead_workers_jobs_are_requeued_at_once(store):
    job = store.submit("train", "m", {})
    store.claim("gone")
    assert store.requeue_worker("other") == []
    assert store.requeue_worker("gone") == [job.id]
    requeued = store.get(job.id)
    assert (requeued.status, requeued.worker_id, requeued.recoveries) == ("queued", None, 1)


# ---- schema migrations ----------------------------------------------------------------------------
def first_release_store(location: str) -> None:
    """A store as the first release left it: its jobs table, with one job, and no idempotency columns."""
    if location.startswith("postgresql://"):
        import psycopg

        from service.jobs_postgres import MIGRATIONS, MIGRATIONS_TABLE
        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute(MIGRATIONS_TABLE)
            conn.execute(MIGRATIONS[0][1])
            conn.execute("INSERT INTO schema_migrations VALUES (1, 'jobs table', 0)")
            conn.execute("INSERT INTO jobs (id, type, name, params, created_at) "
                         "VALUES ('old', 'train', 'm', '{\"epochs\": 3}', 1)")
    else:
        from service.jobs import SCHEMA
        with sqlite3.connect(location) as conn:  # that release had no migrations table at all
            conn.executescript(SCHEMA)
            conn.execute("INSERT INTO jobs (id, type, name, params, created_at) "
                         "VALUES ('old', 'train', 'm', '{\"epochs\": 3}', 1)")


def test_a_newer_release_migrates_an_older_store(location):
    first_release_store(location)
    store = JobStore(location)
    old = store.get("old")  # opening applies the missing migrations
    assert (old.params, old.status, old.idempotency_key) == ({"epochs": 3}, "queued", None)
    assert store.schema_version() == 2
    job = store.submit("train", "n", {}, idempotency_key="k", request_hash="h")
    assert store.find_idempotent("k", "h").id == job.id
    assert store.claim("w").id == "old"  # the old job is still first in the queue
    assert JobStore(location).migrate() == 2  # opening again changes nothing


def test_many_processes_opening_a_new_store_migrate_it_once(location):
    errors, start = [], threading.Barrier(5)

    def open_store() -> None:
        start.wait()
        try:
            JobStore(location).counts()
        except Exception as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert JobStore(location).schema_version() == 2


def test_a_store_from_a_newer_release_is_refused(store, location):
    store.submit("train", "m", {})
    if location.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    else:
        with sqlite3.connect(location) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    with pytest.raises(SchemaTooNew, match="schema version 99, newer than this release knows"):
        JobStore(location).get("x")


# ---- through the API ------------------------------------------------------------------------------
def test_the_jobs_api_on_either_store(location, tmp_path: Path):
    settings = Settings(checkpoints=tmp_path, jobs_db=location, reload_interval_s=0, data_roots=[tmp_path])
    (tmp_path / "corpus").mkdir()
    for split in ("train", "valid"):
        (tmp_path / "corpus" / f"{split}.txt").write_text("the cat sat on the mat .\n" * 20)
    body = {"type": "train", "name": "fresh", "data": str(tmp_path / "corpus"), "epochs": 1}
    with TestClient(create_app(settings)) as api:
        r = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "once"})
        assert r.status_code == 202, r.text
        again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "once"})
        assert again.status_code == 200 and again.json()["id"] == r.json()["id"]
        conflict = api.post("/v1/jobs", json=body)
        assert conflict.status_code == 409 and conflict.json()["error"]["type"] == "conflict"
        listed = api.get("/v1/jobs").json()["data"]
        assert [j["id"] for j in listed] == [r.json()["id"]]
        cancelled = api.post(f"/v1/jobs/{r.json()['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        missing = api.get("/v1/jobs/nope")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "id"
        assert 'rnnlm_jobs{status="cancelled"} 1.0' in api.get("/metrics").text
    assert JobStore(location).get(r.json()["id"]).status == "cancelled"


def test_a_job_store_that_cannot_be_reached_is_a_503(tmp_path: Path, free_port):
    url = f"postgresql://rnnlm:s3cret-pw@127.0.0.1:{free_port()}/jobs"  # nothing listens there
    settings = Settings(checkpoints=tmp_path, jobs_db=url, reload_interval_s=0, data_roots=[tmp_path])
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.txt").write_text("the cat sat on the mat .\n" * 20)
    body = {"type": "train", "name": "m", "data": str(tmp_path / "corpus")}
    with TestClient(create_app(settings)) as api:
        for r in (api.get("/v1/jobs"), api.post("/v1/jobs", json=body), api.get("/v1/jobs/abc")):
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["type"] == "job_store_unavailable" and "cannot be reached" in error["message"]
            assert "s3cret-pw" not in r.text and "rnnlm:***@127.0.0.1" in error["message"]
        metrics = api.get("/metrics")  # a scrape still answers, with the job counts left at zero
        assert metrics.status_code == 200 and 'rnnlm_jobs{status="queued"} 0.0' in metrics.text


def test_the_worker_command_names_a_bad_store_location(proc_tools):
    proc = subprocess.run([sys.executable, "-m", "service.cli", "worker", "--jobs-db", "mysql://db/jobs", "--once"],
                          env=proc_tools.clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "RNNLM_JOBS_DB" in proc.stderr and "postgresql:// URL; got scheme 'mysql'" in proc.stderr
