"""Liveness, readiness and Prometheus metrics."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import RegistryDep
from service.schemas import HealthResponse, ReadyResponse, WorkerState

router = APIRouter(tags=["health"])
METRICS_EXAMPLE = """# HELP rnnlm_requests_total HTTP requests handled
# TYPE rnnlm_requests_total counter
rnnlm_requests_total{endpoint="/v1/next-word",model="lstm",status="200"} 1024.0
"""


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """200 while the process runs."""
    return HealthResponse()


@router.get("/ready", response_model=ReadyResponse, response_model_exclude_none=True,
            responses={503: {"model": ReadyResponse}})
async def ready(request: Request, registry: RegistryDep):
    """200 when at least one model is loaded, else 503 (with the reason when the configured device is missing);
    with `serve --with-worker`, 503 `degraded` while its training worker is down."""
    names = registry.names()
    device = str(registry.device) if registry.device is not None else None
    supervisor = getattr(request.app.state, "worker_supervisor", None)
    worker = WorkerState(**supervisor.state()) if supervisor is not None else None
    if not names:
        body = ReadyResponse(status="not_ready", models=[], device=device, error=registry.device_error, worker=worker)
        return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=503)
    if worker is not None and worker.status != "running":
        body = ReadyResponse(status="degraded", models=names, device=device, worker=worker)
        return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=503)
    return ReadyResponse(status="ready", models=names, device=device, worker=worker)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": METRICS_EXAMPLE}},
                             "description": "Prometheus text format"}})
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
