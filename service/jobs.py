"""The job store: training and distillation jobs in one SQLite table, shared by the API and the workers.

Workers claim a job with a single `UPDATE ... RETURNING` inside `BEGIN IMMEDIATE`, so two workers
never take the same one. A running job carries its worker's id and a heartbeat; every update a
worker makes is fenced on that id, and a job whose heartbeat is older than `stale_after_s` is
handed back to the queue by the next worker that looks (its run state lives in `run_dir`, so it
resumes from its last finished epoch). Timestamps are Unix seconds (float).
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

JOB_TYPES = ("train", "distill")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_RECOVERIES = 3  # a job whose worker died this many times is failed instead of re-queued
BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    type             TEXT NOT NULL CHECK (type IN ('train', 'distill')),
    name             TEXT NOT NULL,
    params           TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress         TEXT,
    result           TEXT,
    error            TEXT,
    worker_id        TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    recoveries       INTEGER NOT NULL DEFAULT 0,
    heartbeat_at     REAL,
    created_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    run_dir          TEXT,
    idempotency_key  TEXT,
    request_hash     TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
"""
# Columns added since the first release: a database made before them gets them on first use.
MIGRATIONS = {"idempotency_key": "ALTER TABLE jobs ADD COLUMN idempotency_key TEXT",
              "request_hash": "ALTER TABLE jobs ADD COLUMN request_hash TEXT"}
INDEXES = "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs (idempotency_key)"


class Beat(NamedTuple):
    owned: bool             # False: the job was re-queued and maybe claimed by another worker; stop
    cancel_requested: bool


class JobNotFound(LookupError):
    """No job has this id."""


class JobConflict(Exception):
    """The job is in a state that does not allow the operation (e.g. cancelling a finished job)."""


class IdempotencyKeyReused(Exception):
    """An idempotency key already names a job submitted with a different request."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used for job {job_id} with a different request; "
                         "use a new key for a new job")
        self.param = "Idempotency-Key"


@dataclass
class Job:
    id: str
    type: str
    name: str
    params: dict[str, Any]
    status: str
    cancel_requested: bool
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    worker_id: str | None
    attempts: int
    recoveries: int
    heartbeat_at: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    run_dir: str | None
    idempotency_key: str | None = None
    request_hash: str | None = None
    replayed: bool = False  # not stored: this job was found under the idempotency key of a repeated submit

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        for key in ("params", "progress", "result"):
            data[key] = json.loads(data[key]) if data[key] is not None else None
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobStore:
    """All SQL lives here. One short-lived connection per call, so it is safe from any thread."""

    def __init__(self, path: str | Path, stale_after_s: float = 30.0) -> None:
        self.path = Path(path)
        self.stale_after_s = stale_after_s
        self._ready = False

    # ---- plumbing ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, transactions are explicit (BEGIN IMMEDIATE) where needed.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A connection to the database, created (WAL mode, schema) on first use."""
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
                conn.executescript(SCHEMA)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
                for column, sql in MIGRATIONS.items():
                    if column not in columns:
                        conn.execute(sql)
                conn.execute(INDEXES)
            finally:
                conn.close()
            self._ready = True
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database write lock up front (no upgrade deadlocks)."""
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ---- API side ------------------------------------------------------------------------------
    def find_idempotent(self, key: str, request_hash: str) -> Job | None:
        """The job submitted under idempotency `key`, if any; IdempotencyKeyReused if its request differs."""
        with self._conn() as conn:
            return self._idempotent(conn, key, request_hash)

    @staticmethod
    def _idempotent(conn: sqlite3.Connection, key: str, request_hash: str) -> Job | None:
        row = conn.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        if row is None:
            return None
        if row["request_hash"] != request_hash:
            raise IdempotencyKeyReused(key, row["id"])
        job = Job.from_row(row)
        job.replayed = True
        return job

    def submit(self, type_: str, name: str, params: dict[str, Any], *, idempotency_key: str | None = None,
               request_hash: str | None = None) -> Job:
        """Queue a job; JobConflict if a queued or running job already builds model `name`. With an
        idempotency key already used for the same request (`request_hash`), the job it made (`replayed`);
        IdempotencyKeyReused if it was used for another request."""
        if type_ not in JOB_TYPES:
            raise ValueError(f"unknown job type {type_!r}")
        job_id = uuid.uuid4().hex
        with self._write() as conn:  # check and insert under one write lock: two submits cannot both pass
            if idempotency_key is not None:
                existing = self._idempotent(conn, idempotency_key, request_hash or "")
                if existing is not None:
                    return existing
            other = conn.execute("SELECT id, status FROM jobs WHERE name = ? AND status IN ('queued', 'running')",
                                 (name,)).fetchone()
            if other is not None:
                raise JobConflict(f"job {other['id']} ({other['status']}) is already training {name!r}; "
                                  "cancel it first")
            row = conn.execute("INSERT INTO jobs (id, type, name, params, created_at, idempotency_key, request_hash) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
                               (job_id, type_, name, json.dumps(params), time.time(), idempotency_key,
                                request_hash if idempotency_key is not None else None)).fetchone()
        return Job.from_row(row)

    def get(self, job_id: str) -> Job:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return Job.from_row(row)

    def list_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        query, args = "SELECT * FROM jobs", []
        if status is not None:
            query, args = query + " WHERE status = ?", [status]
        with self._conn() as conn:
            rows = conn.execute(query + " ORDER BY created_at DESC, rowid DESC LIMIT ?", (*args, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zeros included)."""
        with self._conn() as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | {r[0]: r[1] for r in rows}

    def cancel(self, job_id: str) -> Job:
        """Queued: cancelled at once. Running: flagged, the worker stops between steps. Finished: JobConflict."""
        with self._write() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            if row["status"] in FINISHED:
                raise JobConflict(f"job {job_id} has already {row['status']}")
            if row["status"] == "queued":
                row = conn.execute("UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished_at = ? "
                                   "WHERE id = ? RETURNING *", (time.time(), job_id)).fetchone()
            else:
                row = conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? RETURNING *",
                                   (job_id,)).fetchone()
        return Job.from_row(row)

    # ---- worker side ---------------------------------------------------------------------------
    def recover_stale(self, conn: sqlite3.Connection | None = None) -> list[str]:
        """Hand running jobs whose worker stopped heartbeating back to the queue (or end them).

        A job already asked to cancel is cancelled; one whose workers died MAX_RECOVERIES times is
        failed, so that a job that kills its worker (e.g. out of memory) cannot loop forever.
        """
        if conn is None:
            with self._write() as conn:
                return self.recover_stale(conn)
        stale = "status = 'running' AND (heartbeat_at IS NULL OR heartbeat_at < ?)"
        return self._recover(conn, stale, (time.time() - self.stale_after_s,))

    def requeue_worker(self, worker_id: str) -> list[str]:
        """Recover the running jobs of a worker known to be dead (its supervisor saw it exit) at once,
        as `recover_stale` would once their heartbeat is old; returns their ids."""
        with self._write() as conn:
            return self._recover(conn, "status = 'running' AND worker_id = ?", (worker_id,))

    def _recover(self, conn: sqlite3.Connection, where: str, args: tuple) -> list[str]:
        now = time.time()
        ids = [r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE {where}", args)]
        conn.execute(f"UPDATE jobs SET status = 'cancelled', finished_at = ?, worker_id = NULL "
                     f"WHERE {where} AND cancel_requested = 1", (now, *args))
        conn.execute(f"UPDATE jobs SET status = 'failed', finished_at = ?, worker_id = NULL, "
                     f"error = 'the worker running this job died ' || (recoveries + 1) || ' times' "
                     f"WHERE {where} AND recoveries + 1 >= ?", (now, *args, MAX_RECOVERIES + 1))
        conn.execute(f"UPDATE jobs SET status = 'queued', worker_id = NULL, heartbeat_at = NULL, "
                     f"recoveries = recoveries + 1 WHERE {where}", args)
        return ids

    def claim(self, worker_id: str) -> Job | None:
        """Take the oldest queued job (after re-queueing stale ones); None if the queue is empty."""
        now = time.time()
        with self._write() as conn:
            self.recover_stale(conn)
            row = conn.execute(
                "UPDATE jobs SET status = 'running', worker_id = ?, heartbeat_at = ?, "
                "started_at = COALESCE(started_at, ?), attempts = attempts + 1 "
                "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1) "
                "AND status = 'queued' RETURNING *", (worker_id, now, now)).fetchone()
        return Job.from_row(row) if row is not None else None

    def _owned(self, sql: str, args: tuple, job_id: str, worker_id: str) -> bool:
        """Run an UPDATE fenced on this worker still owning the running job; False if it lost it."""
        with self._write() as conn:
            cur = conn.execute(sql + " WHERE id = ? AND worker_id = ? AND status = 'running'",
                               (*args, job_id, worker_id))
            return cur.rowcount == 1

    def set_run_dir(self, job_id: str, worker_id: str, run_dir: str) -> bool:
        return self._owned("UPDATE jobs SET run_dir = ?", (run_dir,), job_id, worker_id)

    def heartbeat(self, job_id: str, worker_id: str, progress: dict[str, Any] | None = None) -> Beat:
        """Refresh the heartbeat (and progress, when given) and read the cancel flag, in one write."""
        sets, args = "heartbeat_at = ?", [time.time()]
        if progress is not None:
            sets, args = sets + ", progress = ?", [*args, json.dumps(progress)]
        with self._write() as conn:
            row = conn.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND worker_id = ? AND status = 'running' "
                               "RETURNING cancel_requested", (*args, job_id, worker_id)).fetchone()
        return Beat(owned=row is not None, cancel_requested=bool(row and row[0]))

    def finish(self, job_id: str, worker_id: str, status: str, *, result: dict[str, Any] | None = None,
               error: str | None = None) -> bool:
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status!r}")
        return self._owned("UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = ?, heartbeat_at = ?",
                           (status, json.dumps(result) if result is not None else None, error, time.time(),
                            time.time()), job_id, worker_id)

    def release(self, job_id: str, worker_id: str) -> bool:
        """Put a running job back in the queue (the worker is shutting down); it resumes later."""
        return self._owned("UPDATE jobs SET status = 'queued', worker_id = NULL, heartbeat_at = NULL", (),
                           job_id, worker_id)
