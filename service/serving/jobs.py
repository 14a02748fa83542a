"""Training and distillation jobs over the job store: submit, list, inspect, cancel."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from models import dataset
from models.checkpoint import CONFIG
from models.data import check_corpus_within, split_path
from models.errors import DataError
from service.errors import BadRequestError, ConflictError, ModelNotFoundError
from service.jobs import Job, JobConflict, JobStore
from service.schemas import JobCreated, JobInfo, JobList, JobProgress, JobRequest, JobStatus
from service.settings import Settings


def resolve_data(data: str, roots: list[Path]) -> Path:
    """The corpus folder a job may read: inside a data root once symlinks and `..` are resolved."""
    if not roots:
        raise BadRequestError("training jobs are disabled: no data roots are configured (set RNNLM_DATA_ROOTS)",
                              "data")
    try:
        path = Path(data).resolve()
        allowed = any(path.is_relative_to(Path(root).resolve()) for root in roots)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte, ...
        raise BadRequestError(f"data: not a usable path: {data!r}", "data") from None
    if not allowed:  # checked before anything under the path is looked at
        raise BadRequestError(f"data: {data!r} is outside the allowed data roots", "data")
    if not path.is_dir():
        raise BadRequestError(f"data: no such corpus folder: {data!r}", "data")
    if not split_path(path, "train").is_file():
        raise BadRequestError(f"data: {data!r} has no train.txt", "data")
    try:  # every file a run reads, symlinks followed, must stay inside the roots too
        check_corpus_within(path, roots)
    except DataError as exc:
        raise BadRequestError(f"data: {exc}", "data") from None
    return path


def check_names(body: JobRequest, settings: Settings) -> None:
    """The result name must be free (or overwritable) and a distill job's teacher must exist."""
    checkpoints = Path(settings.checkpoints)
    if body.type == "distill" and not (checkpoints / body.teacher / CONFIG).is_file():
        raise ModelNotFoundError(body.teacher, "teacher", f"teacher: no model {body.teacher!r} in the checkpoint "
                                 "dir (GET /v1/models lists them)")
    if body.name in settings.aliases:
        raise ConflictError(f"name: {body.name!r} is an alias; choose another name", "name")
    if (checkpoints / body.name).exists() and not body.overwrite:
        raise ConflictError(f"name: model {body.name!r} already exists; pass \"overwrite\": true to add a new "
                            "version of it (served only if it passes the promotion gate)", "name")


def request_hash(body: JobRequest) -> str:
    """The job request as validated (defaults filled in), hashed: what an idempotency key is bound to."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _time(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, timezone.utc) if value is not None else None


def job_info(job: Job) -> JobInfo:
    return JobInfo(id=job.id, type=job.type, name=job.name, status=job.status,
                   cancel_requested=job.cancel_requested, params=job.params,
                   progress=JobProgress(**job.progress) if job.progress else None,
                   model=job.name if job.status == "succeeded" else None, result=job.result, error=job.error,
                   attempts=job.attempts, worker_id=job.worker_id, created_at=_time(job.created_at),
                   started_at=_time(job.started_at), finished_at=_time(job.finished_at),
                   heartbeat_at=_time(job.heartbeat_at))


class JobService:
    """`/v1/jobs*`: blocking SQLite calls, so its routes are plain `def` (FastAPI's thread pool)."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def submit(self, body: JobRequest) -> JobCreated:
        """Queue a job once its data folder and names check out; the store refuses a name already training."""
        return self.submit_idempotent(body, None)[0]

    def submit_idempotent(self, body: JobRequest, key: str | None) -> tuple[JobCreated, bool]:
        """`submit`, except that a request repeated with the same idempotency `key` (a client retrying after
        a dropped connection) gets the job the first one made: (job, True). The same key with another
        request is an error (IdempotencyKeyReused)."""
        digest = request_hash(body)
        if key is not None and (job := self.store.find_idempotent(key, digest)) is not None:
            return JobCreated(id=job.id, status=job.status), True  # before the checks: its model may exist now
        data = resolve_data(self.corpus_of(body), self.settings.job_data_roots)
        check_names(body, self.settings)
        params = body.model_dump(exclude={"type", "name"}) | {"data": str(data)}
        try:
            job = self.store.submit(body.type, body.name, params, idempotency_key=key, request_hash=digest)
        except JobConflict as exc:
            raise ConflictError(f"name: {exc}", "name") from None
        return JobCreated(id=job.id, status=job.status), job.replayed

    def corpus_of(self, body: JobRequest) -> str:
        """The corpus folder a job names: its `data`, or the folder of its uploaded `dataset`."""
        if body.dataset is None:
            return body.data
        if body.data is not None:
            raise BadRequestError("give data (a folder) or dataset (an uploaded dataset), not both", "dataset")
        if self.settings.datasets_dir is None:
            raise BadRequestError("dataset: the server has no datasets dir (set RNNLM_DATASETS_DIR)", "dataset")
        try:
            return str(dataset.get(self.settings.datasets_dir, body.dataset).path)
        except dataset.DatasetNotFound as exc:
            exc.param = "dataset"
            raise

    def list_jobs(self, status: JobStatus | None, limit: int) -> JobList:
        return JobList(data=[job_info(j) for j in self.store.list_jobs(status, limit)])

    def get(self, job_id: str) -> JobInfo:
        return job_info(self.store.get(job_id))

    def cancel(self, job_id: str) -> JobInfo:
        """A queued job is cancelled at once; a running one is asked to stop (still "running" here)."""
        return job_info(self.store.cancel(job_id))
