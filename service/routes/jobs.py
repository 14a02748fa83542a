"""Training and distillation jobs: submit, list, inspect, cancel. The work happens in `rnnlm worker`."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from service.deps import ApiKeyDep, JobServiceDep
from service.schemas import ErrorResponse, JobCreated, JobInfo, JobList, JobRequest, JobStatus

ERRORS = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
          422: {"model": ErrorResponse}}
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[ApiKeyDep], responses=ERRORS)


# Plain `def` routes: FastAPI runs them in its thread pool, so SQLite never blocks the event loop.
IdempotencyKey = Annotated[str | None, Header(
    min_length=1, max_length=255, pattern=r"^[!-~]+$",
    description="any unique string (e.g. a UUID): resending the same request with the same key, after a dropped "
                "connection, answers 200 with the job the first one created instead of queueing another")]
REPLAYED = {"model": JobCreated, "description": "the job an earlier request with the same `Idempotency-Key` created "
                                                "(header `Idempotent-Replayed: true`)"}


@router.post("", status_code=202, response_model=JobCreated, responses={200: REPLAYED, 400: {"model": ErrorResponse},
                                                                        409: {"model": ErrorResponse}})
def submit_job(body: JobRequest, response: Response, jobs: JobServiceDep,
               idempotency_key: IdempotencyKey = None) -> JobCreated:
    """Queue a training or distillation job; a worker picks it up. The new model is served when it succeeds."""
    created, replayed = jobs.submit_idempotent(body, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{created.id}"
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return created


@router.get("", response_model=JobList)
def list_jobs(jobs: JobServiceDep, status: JobStatus | None = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JobList:
    """Jobs, newest first, optionally only those with one status."""
    return jobs.list_jobs(status, limit)


@router.get("/{job_id}", response_model=JobInfo)
def get_job(job_id: str, jobs: JobServiceDep) -> JobInfo:
    return jobs.get(job_id)


@router.post("/{job_id}/cancel", response_model=JobInfo, responses={202: {"model": JobInfo},
                                                                     409: {"model": ErrorResponse}})
def cancel_job(job_id: str, response: Response, jobs: JobServiceDep) -> JobInfo:
    """A queued job is cancelled at once (200); a running one stops at its next step (202); a finished one: 409."""
    job = jobs.cancel(job_id)
    if job.status == "running":
        response.status_code = 202
    return job
