"""The job store on PostgreSQL: the SQLite store's table and contract, for API and workers on several hosts.

A worker claims the oldest queued job with `SELECT ... FOR UPDATE SKIP LOCKED` inside the claiming
`UPDATE`, so any number of workers on any number of machines take different jobs without waiting on
each other; stale jobs are locked the same way before they are handed back, so each is recovered once.
Every timestamp comes from the database's clock (Unix seconds, like the SQLite store), so workers whose
clocks disagree still agree on which heartbeat is stale. One short-lived connection per call, as in the
SQLite store: safe from any thread, and nothing is shared across a fork.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from service.jobs import (
    FINISHED,
    JOB_TYPES,
    MAX_RECOVERIES,
    STATUSES,
    Beat,
    IdempotencyKeyReused,
    Job,
    JobConflict,
    JobNotFound,
    JobStore,
    JobStoreUnavailable,
    SchemaTooNew,
)

# The columns a Job is made of (`replayed` is not stored); `seq` orders jobs created in the same instant.
COLUMNS = ", ".join(f.name for f in fields(Job) if f.name != "replayed")
NOW = "extract(epoch from statement_timestamp())::double precision"  # one instant per statement
CONNECT_TIMEOUT_S = 10
# pg_advisory_xact_lock keys: schema migrations, and submissions (the "one active job per name" check)
MIGRATE_LOCK, SUBMIT_LOCK = 0x726E6E6C0001, 0x726E6E6C0002

# Numbered schema migrations, applied in order at open under an advisory lock; the same versions as the
# SQLite store's. Append only: a released migration is never edited.
MIGRATIONS: list[tuple[str, str]] = [
    ("jobs table", """
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    seq              BIGINT GENERATED ALWAYS AS IDENTITY,
    type             TEXT NOT NULL CHECK (type IN ('train', 'distill')),
    name             TEXT NOT NULL,
    params           JSONB NOT NULL,
    status           TEXT NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    progress         JSONB,
    result           JSONB,
    error            TEXT,
    worker_id        TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    recoveries       INTEGER NOT NULL DEFAULT 0,
    heartbeat_at     DOUBLE PRECISION,
    created_at       DOUBLE PRECISION NOT NULL,
    started_at       DOUBLE PRECISION,
    finished_at      DOUBLE PRECISION,
    run_dir          TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at, seq);
"""),
    ("idempotency keys", """
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS idempotency_key TEXT;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS request_hash TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs (idempotency_key);
"""),
]
MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"""
STALE = f"status = 'running' AND (heartbeat_at IS NULL OR heartbeat_at < {NOW} - %s)"


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _job(row: dict[str, Any]) -> Job:
    return Job(**row)  # JSONB columns arrive as Python objects, BOOLEAN as bool


class PostgresJobStore(JobStore):
    """All SQL for PostgreSQL lives here; `url` is a libpq URL (postgresql://user:password@host:port/db)."""

    backend = "postgresql"

    def __init__(self, url: str, stale_after_s: float = 30.0) -> None:
        self.url = url
        self.stale_after_s = stale_after_s
        self.runs_dir = None  # the worker's setting decides (no file of ours to put them beside)
        self._ready = False

    def __str__(self) -> str:
        return redact(self.url)

    # ---- plumbing ------------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.OperationalError as exc:  # down, unreachable, refused: the API answers 503
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise JobStoreUnavailable(f"the job store {self} cannot be reached: {reason}") from exc

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        """A connection (autocommit: transactions are explicit), the schema migrated on first use."""
        with self._connect() as conn:
            if not self._ready:
                self.migrate(conn)
                self._ready = True
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection]:
        with self._conn() as conn, conn.transaction():
            yield conn

    def migrate(self, conn: psycopg.Connection | None = None) -> int:
        """Apply the migrations this store lacks (under a lock: many processes may open it at once); returns
        its schema version. SchemaTooNew if a newer release has already migrated it further."""
        if conn is None:
            with self._connect() as conn:
                return self.migrate(conn)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            conn.execute(MIGRATIONS_TABLE)
            version = conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations").fetchone()["v"]
            if version > len(MIGRATIONS):
                raise SchemaTooNew(str(self), version, len(MIGRATIONS))
            for number, (name, sql) in enumerate(MIGRATIONS[version:], start=version + 1):
                conn.execute(sql)
                conn.execute(f"INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, {NOW})",
                             (number, name))
        return max(version, len(MIGRATIONS))

    def schema_version(self) -> int:
        with self._conn() as conn:
            return conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations").fetchone()["v"]

    def exists(self) -> bool:
        with self._connect() as conn:
            return conn.execute("SELECT to_regclass('jobs') IS NOT NULL AS e").fetchone()["e"]

    # ---- API side ------------------------------------------------------------------------------
    def find_idempotent(self, key: str, request_hash: str) -> Job | None:
        with self._conn() as conn:
            return self._idempotent(conn, key, request_hash)

    @staticmethod
    def _idempotent(conn: psycopg.Connection, key: str, request_hash: str) -> Job | None:
        row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE idempotency_key = %s", (key,)).fetchone()
        if row is None:
            return None
        if row["request_hash"] != request_hash:
            raise IdempotencyKeyReused(key, row["id"])
        job = _job(row)
        job.replayed = True
        return job

    def submit(self, type_: str, name: str, params: dict[str, Any], *, idempotency_key: str | None = None,
               request_hash: str | None = None) -> Job:
        if type_ not in JOB_TYPES:
            raise ValueError(f"unknown job type {type_!r}")
        job_id = self.new_id()
        with self._tx() as conn:  # one submission at a time: two cannot both pass the checks below
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SUBMIT_LOCK,))
            if idempotency_key is not None:
                existing = self._idempotent(conn, idempotency_key, request_hash or "")
                if existing is not None:
                    return existing
            other = conn.execute("SELECT id, status FROM jobs WHERE name = %s AND status IN ('queued', 'running') "
                                 "LIMIT 1", (name,)).fetchone()
            if other is not None:
                raise JobConflict(f"job {other['id']} ({other['status']}) is already training {name!r}; "
                                  "cancel it first")
            row = conn.execute(
                f"INSERT INTO jobs (id, type, name, params, created_at, idempotency_key, request_hash) "
                f"VALUES (%s, %s, %s, %s, {NOW}, %s, %s) RETURNING {COLUMNS}",
                (job_id, type_, name, Jsonb(params), idempotency_key,
                 request_hash if idempotency_key is not None else None)).fetchone()
        return _job(row)

    def get(self, job_id: str) -> Job:
        with self._conn() as conn:
            row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    def list_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        where, args = ("WHERE status = %s", [status]) if status is not None else ("", [])
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {COLUMNS} FROM jobs {where} ORDER BY created_at DESC, seq DESC LIMIT %s",
                                (*args, limit)).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._conn() as conn:
            rows = conn.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return dict.fromkeys(STATUSES, 0) | {r["status"]: r["n"] for r in rows}

    def cancel(self, job_id: str) -> Job:
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            if row["status"] in FINISHED:
                raise JobConflict(f"job {job_id} has already {row['status']}")
            if row["status"] == "queued":
                sets = f"status = 'cancelled', cancel_requested = TRUE, finished_at = {NOW}"
            else:
                sets = "cancel_requested = TRUE"
            row = conn.execute(f"UPDATE jobs SET {sets} WHERE id = %s RETURNING {COLUMNS}", (job_id,)).fetchone()
        return _job(row)

    # ---- worker side ---------------------------------------------------------------------------
    def recover_stale(self, conn: psycopg.Connection | None = None) -> list[str]:
        if conn is None:
            with self._tx() as conn:
                return self.recover_stale(conn)
        return self._recover(conn, STALE, (self.stale_after_s,))

    def requeue_worker(self, worker_id: str) -> list[str]:
        with self._tx() as conn:
            return self._recover(conn, "status = 'running' AND worker_id = %s", (worker_id,))

    @staticmethod
    def _recover(conn: psycopg.Connection, where: str, args: tuple) -> list[str]:
        # Lock the rows first, skipping any another worker is recovering right now: each is handed back once.
        ids = [r["id"] for r in conn.execute(f"SELECT id FROM jobs WHERE {where} FOR UPDATE SKIP LOCKED", args)]
        if not ids:
            return []
        mine = "id = ANY(%s) AND status = 'running'"
        conn.execute(f"UPDATE jobs SET status = 'cancelled', finished_at = {NOW}, worker_id = NULL "
                     f"WHERE {mine} AND cancel_requested", (ids,))
        conn.execute(f"UPDATE jobs SET status = 'failed', finished_at = {NOW}, worker_id = NULL, "
                     f"error = 'the worker running this job died ' || (recoveries + 1) || ' times' "
                     f"WHERE {mine} AND recoveries + 1 >= %s", (ids, MAX_RECOVERIES + 1))
        conn.execute(f"UPDATE jobs SET status = 'queued', worker_id = NULL, heartbeat_at = NULL, "
                     f"recoveries = recoveries + 1 WHERE {mine}", (ids,))
        return ids

    def claim(self, worker_id: str) -> Job | None:
        with self._tx() as conn:
            self._recover(conn, STALE, (self.stale_after_s,))
            row = conn.execute(
                f"UPDATE jobs SET status = 'running', worker_id = %s, heartbeat_at = {NOW}, "
                f"started_at = COALESCE(started_at, {NOW}), attempts = attempts + 1 "
                f"WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, seq LIMIT 1 "
                f"FOR UPDATE SKIP LOCKED) AND status = 'queued' RETURNING {COLUMNS}", (worker_id,)).fetchone()
        return _job(row) if row is not None else None

    def _owned(self, sets: str, args: tuple, job_id: str, worker_id: str) -> bool:
        with self._conn() as conn:
            cur = conn.execute(f"UPDATE jobs SET {sets} WHERE id = %s AND worker_id = %s AND status = 'running'",
                               (*args, job_id, worker_id))
            return cur.rowcount == 1

    def set_run_dir(self, job_id: str, worker_id: str, run_dir: str) -> bool:
        return self._owned("run_dir = %s", (run_dir,), job_id, worker_id)

    def heartbeat(self, job_id: str, worker_id: str, progress: dict[str, Any] | None = None) -> Beat:
        sets, args = f"heartbeat_at = {NOW}", ()
        if progress is not None:
            sets, args = sets + ", progress = %s", (Jsonb(progress),)
        with self._conn() as conn:
            row = conn.execute(f"UPDATE jobs SET {sets} WHERE id = %s AND worker_id = %s AND status = 'running' "
                               "RETURNING cancel_requested", (*args, job_id, worker_id)).fetchone()
        return Beat(owned=row is not None, cancel_requested=bool(row and row["cancel_requested"]))

    def finish(self, job_id: str, worker_id: str, status: str, *, result: dict[str, Any] | None = None,
               error: str | None = None) -> bool:
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status!r}")
        return self._owned(f"status = %s, result = %s, error = %s, finished_at = {NOW}, heartbeat_at = {NOW}",
                           (status, Jsonb(result) if result is not None else None, error), job_id, worker_id)

    def release(self, job_id: str, worker_id: str) -> bool:
        return self._owned("status = 'queued', worker_id = NULL, heartbeat_at = NULL", (), job_id, worker_id)
