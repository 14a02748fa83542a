"""Training and distillation jobs: submit, list, inspect, cancel. The work happens in `rnnlm worker`."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from models.checkpoint import CONFIG
from models.data import split_path
from service.deps import ApiKeyDep, JobStoreDep, SettingsDep
from service.jobs import Job, JobConflict, JobNotFound
from service.schemas import ErrorResponse, JobCreated, JobInfo, JobList, JobProgress, JobRequest, JobStatus
from service.settings import Settings

ERRORS = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
          422: {"model": ErrorResponse}}
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[ApiKeyDep], responses=ERRORS)


def _error(status: int, type_: str, message: str, param: str | None = None) -> HTTPException:
    return HTTPException(status, {"type": type_, "message": message, "param": param})


def resolve_data(data: str, roots: list[Path]) -> Path:
    """The corpus folder a job may read: inside a data root once symlinks and `..` are resolved."""
    if not roots:
        raise _error(400, "invalid_request_error", "training jobs are disabled: no data roots are configured "
                     "(set RNNLM_DATA_ROOTS)", "data")
    try:
        path = Path(data).resolve()
        allowed = any(path.is_relative_to(Path(root).resolve()) for root in roots)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte, ...
        raise _error(400, "invalid_request_error", f"data: not a usable path: {data!r}", "data") from None
    if not allowed:  # checked before anything under the path is looked at
        raise _error(400, "invalid_request_error", f"data: {data!r} is outside the allowed data roots", "data")
    if not path.is_dir():
        raise _error(400, "invalid_request_error", f"data: no such corpus folder: {data!r}", "data")
    if not split_path(path, "train").is_file():
        raise _error(400, "invalid_request_error", f"data: {data!r} has no train.txt", "data")
    return path


def check_names(body: JobRequest, settings: Settings) -> None:
    """The result name must be free (or overwritable) and a distill job's teacher must exist."""
    checkpoints = Path(settings.checkpoints)
    if body.type == "distill" and not (checkpoints / body.teacher / CONFIG).is_file():
        raise _error(404, "model_not_found", f"teacher: no model {body.teacher!r} in the checkpoint dir "
                     "(GET /v1/models lists them)", "teacher")
    if body.name in settings.aliases:
        raise _error(409, "conflict", f"name: {body.name!r} is an alias; choose another name", "name")
    if (checkpoints / body.name).exists() and not body.overwrite:
        raise _error(409, "conflict", f"name: model {body.name!r} already exists; "
                     "pass \"overwrite\": true to replace it", "name")


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


def _get(store, job_id: str) -> Job:
    try:
        return store.get(job_id)
    except JobNotFound:
        raise _error(404, "job_not_found", f"no job with id {job_id!r}", "id") from None


# Plain `def` routes: FastAPI runs them in its thread pool, so SQLite never blocks the event loop.
@router.post("", status_code=202, response_model=JobCreated, responses={400: {"model": ErrorResponse},
                                                                        409: {"model": ErrorResponse}})
def submit_job(body: JobRequest, response: Response, settings: SettingsDep, store: JobStoreDep) -> JobCreated:
    """Queue a training or distillation job; a worker picks it up. The new model is served when it succeeds."""
    data = resolve_data(body.data, settings.data_roots)
    check_names(body, settings)
    params = body.model_dump(exclude={"type", "name"}) | {"data": str(data)}
    try:
        job = store.submit(body.type, body.name, params)
    except JobConflict as exc:
        raise _error(409, "conflict", f"name: {exc}", "name") from None
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobCreated(id=job.id, status=job.status)


@router.get("", response_model=JobList)
def list_jobs(store: JobStoreDep, status: JobStatus | None = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JobList:
    """Jobs, newest first, optionally only those with one status."""
    return JobList(data=[job_info(j) for j in store.list_jobs(status, limit)])


@router.get("/{job_id}", response_model=JobInfo)
def get_job(job_id: str, store: JobStoreDep) -> JobInfo:
    return job_info(_get(store, job_id))


@router.post("/{job_id}/cancel", response_model=JobInfo, responses={202: {"model": JobInfo},
                                                                     409: {"model": ErrorResponse}})
def cancel_job(job_id: str, response: Response, store: JobStoreDep) -> JobInfo:
    """A queued job is cancelled at once (200); a running one stops at its next step (202); a finished one: 409."""
    try:
        job = store.cancel(job_id)
    except JobNotFound:
        raise _error(404, "job_not_found", f"no job with id {job_id!r}", "id") from None
    except JobConflict as exc:
        raise _error(409, "conflict", str(exc)) from None
    if job.status == "running":
        response.status_code = 202
    return job_info(job)

