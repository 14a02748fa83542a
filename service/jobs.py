"""The job store: training and distillation jobs in one table, shared by the API and the workers.

`JobStore(location)` opens the store a setting names (`RNNLM_JOBS_DB`): a path or a `sqlite:///` URL
gives the SQLite store below, for an API and workers on one host; a `postgresql://` URL gives the
PostgreSQL store (service/jobs_postgres.py) for API replicas and workers on several. Both keep one
contract, written down in `JobStore`: a claim is atomic, so two workers never take the same job; a
running job carries its worker's id and a heartbeat, and every update a worker makes is fenced on that
id; a job whose heartbeat is older than `stale_after_s` is handed back to the queue by the next worker
that looks (its run state lives in `run_dir`, so it resumes from its last finished epoch). Each backend
numbers its schema migrations and applies the missing ones when it is opened, so a newer release
upgrades an older store in place. Timestamps are Unix seconds (float).

SQLite: workers claim with a single `UPDATE ... RETURNING` inside `BEGIN IMMEDIATE`.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
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
POSTGRES_SCHEMES = ("postgresql", "postgres")

# The first release's table: migration 1 of the SQLite store.
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
    run_dir          TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
"""
MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"""


def _add_idempotency_keys(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for column in ("idempotency_key", "request_hash"):
        if column not in columns:  # SQLite has no ADD COLUMN IF NOT EXISTS
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs (idempotency_key)")


# Numbered schema migrations of the SQLite store, applied in order at open (the PostgreSQL store has the
# same versions). Append only: a released migration is never edited. A store made before the
# migrations table existed has version 0, and migration 1 finds its table already there.
MIGRATIONS: list[tuple[str, str | Callable[[sqlite3.Connection], None]]] = [
    ("jobs table", SCHEMA),
    ("idempotency keys", _add_idempotency_keys),
]


class Beat(NamedTuple):
    owned: bool             # False: the job was re-queued and maybe claimed by another worker; stop
    cancel_requested: bool


class JobNotFound(LookupError):
    """No job has this id."""


class JobConflict(Exception):
    """The job is in a state that does not allow the operation (e.g. cancelling a finished job)."""


class JobStoreUnavailable(RuntimeError):
    """The job store cannot be used now: its server cannot be reached, or it is from a newer release."""


class SchemaTooNew(JobStoreUnavailable):
    """A newer release has migrated the store past what this one knows; stores are never migrated back."""

    def __init__(self, where: str, found: int, known: int) -> None:
        super().__init__(f"the job store {where} has schema version {found}, newer than this release knows "
                         f"({known}): upgrade rnnlm-serve on this host")


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


def parse_location(location: str | Path) -> tuple[str, str]:
    """(backend, target) of a job store setting: ("sqlite", path) for a path or a sqlite:/// URL (as in
    SQLAlchemy: sqlite:///jobs.db is relative, sqlite:////var/lib/jobs.db absolute), ("postgresql", url)
    for a postgresql:// or postgres:// URL; ValueError for anything else."""
    text = str(location)
    if isinstance(location, Path) or "://" not in text:
        if not text.strip():
            raise ValueError("the job store location is empty")
        return "sqlite", text
    scheme = text.split("://", 1)[0].lower()
    if scheme == "sqlite":
        path = text[len("sqlite:///"):] if text.lower().startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"a SQLite job store URL is sqlite:///relative/path or sqlite:////absolute/path; "
                             f"got {text!r}")
        return "sqlite", path
    if scheme in POSTGRES_SCHEMES:
        return "postgresql", text
    raise ValueError(f"the job store is a path, a sqlite:/// URL or a postgresql:// URL; got scheme {scheme!r}")


class JobStore:
    """The job store contract, kept by every backend. `JobStore(location, stale_after_s)` opens the
    backend `location` names (see `parse_location`); nothing is created or connected to until first use."""

    backend: str
    stale_after_s: float
    # where a worker keeps running jobs' resumable state unless told otherwise (None: beside its checkpoints)
    runs_dir: Path | None

    def __new__(cls, location: str | Path, stale_after_s: float = 30.0) -> JobStore:
        if cls is JobStore:
            backend, _ = parse_location(location)
            if backend == "postgresql":
                try:
                    from service.jobs_postgres import PostgresJobStore
                except ImportError as exc:
                    raise RuntimeError(f"a PostgreSQL job store needs psycopg ({exc}): "
                                       "pip install 'rnnlm-serve[postgres]'") from None
                cls = PostgresJobStore
            else:
                cls = SqliteJobStore
        return super().__new__(cls)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def exists(self) -> bool:
        """Whether the store has been created (asking never creates it)."""
        raise NotImplementedError

    def migrate(self) -> int:
        """Create the store or apply the migrations it lacks; its schema version. SchemaTooNew if a newer
        release migrated it further. Every other method does this on first use."""
        raise NotImplementedError

    def schema_version(self) -> int:
        raise NotImplementedError

    # ---- API side ------------------------------------------------------------------------------
    def find_idempotent(self, key: str, request_hash: str) -> Job | None:
        """The job submitted under idempotency `key`, if any; IdempotencyKeyReused if its request differs."""
        raise NotImplementedError

    def submit(self, type_: str, name: str, params: dict[str, Any], *, idempotency_key: str | None = None,
               request_hash: str | None = None) -> Job:
        """Queue a job; JobConflict if a queued or running job already builds model `name`. With an
        idempotency key already used for the same request (`request_hash`), the job it made (`replayed`);
        IdempotencyKeyReused if it was used for another request."""
        raise NotImplementedError

    def get(self, job_id: str) -> Job:
        """The job; JobNotFound if there is none with this id."""
        raise NotImplementedError

    def list_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zeros included)."""
        raise NotImplementedError

    def cancel(self, job_id: str) -> Job:
        """Queued: cancelled at once. Running: flagged, the worker stops between steps. Finished: JobConflict."""
        raise NotImplementedError

    # ---- worker side ---------------------------------------------------------------------------
    def recover_stale(self) -> list[str]:
        """Hand running jobs whose worker stopped heartbeating back to the queue (or end them); their ids.

        A job already asked to cancel is cancelled; one whose workers died MAX_RECOVERIES times is
        failed, so that a job that kills its worker (e.g. out of memory) cannot loop forever.
        """
        raise NotImplementedError

    def requeue_worker(self, worker_id: str) -> list[str]:
        """Recover the running jobs of a worker known to be dead (its supervisor saw it exit) at once,
        as `recover_stale` would once their heartbeat is old; returns their ids."""
        raise NotImplementedError

    def claim(self, worker_id: str) -> Job | None:
        """Take the oldest queued job (after re-queueing stale ones); None if the queue is empty."""
        raise NotImplementedError

    def set_run_dir(self, job_id: str, worker_id: str, run_dir: str) -> bool:
        """Record where the job's resumable state lives; False if the worker no longer owns the job."""
        raise NotImplementedError

    def heartbeat(self, job_id: str, worker_id: str, progress: dict[str, Any] | None = None) -> Beat:
        """Refresh the heartbeat (and progress, when given) and read the cancel flag, in one write."""
        raise NotImplementedError

    def finish(self, job_id: str, worker_id: str, status: str, *, result: dict[str, Any] | None = None,
               error: str | None = None) -> bool:
        """End an owned running job as succeeded, failed or cancelled; False if the worker lost it."""
        raise NotImplementedError

    def release(self, job_id: str, worker_id: str) -> bool:
        """Put a running job back in the queue (the worker is shutting down); it resumes later."""
        raise NotImplementedError


class SqliteJobStore(JobStore):
    """All SQL for SQLite lives here. One short-lived connection per call, so it is safe from any thread."""

    backend = "sqlite"

    def __init__(self, path: str | Path, stale_after_s: float = 30.0) -> None:
        self.path = Path(parse_location(path)[1])
        self.stale_after_s = stale_after_s
        self._ready = False

    def __str__(self) -> str:
        return str(self.path)

    @property
    def runs_dir(self) -> Path:
        return self.path.resolve().parent / "runs"

    # ---- plumbing ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, transactions are explicit (BEGIN IMMEDIATE) where needed.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn

    def migrate(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            _set_wal(conn)  # readers never block the writer
            conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others then find nothing to do
            try:
                conn.execute(MIGRATIONS_TABLE)
                version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
                if version > len(MIGRATIONS):
                    raise SchemaTooNew(str(self.path), version, len(MIGRATIONS))
                for number, (name, step) in enumerate(MIGRATIONS[version:], start=version + 1):
                    if callable(step):
                        step(conn)
                    else:  # not executescript: it would commit the transaction first
                        for statement in filter(str.strip, step.split(";")):
                            conn.execute(statement)
                    conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                                 (number, name, time.time()))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()
        self._ready = True
        return max(version, len(MIGRATIONS))

    def schema_version(self) -> int:
        with self._conn() as conn:
            return conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A connection to the database, created (WAL mode, migrations) on first use."""
        if not self._ready:
            self.migrate()
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


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch a store to write-ahead logging. Changing the journal mode takes the database's exclusive
    lock and fails at once with "database is locked" (no busy wait) while another process holds it, as
    when several processes open a new store together: retry until the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
