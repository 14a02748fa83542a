"""The FastAPI application: settings -> registry (+ watcher), batcher, serving classes -> routers, error
handlers, metrics."""
from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import REGISTRY

from service import errors, request_id
from service.admission import AdmissionMiddleware
from service.batcher import Batcher
from service.deps import InferenceKeyDep
from service.jobs import JobStore
from service.metrics import JobCounts, MetricsMiddleware
from service.registry import ModelRegistry
from service.routes import datasets, generate, health, jobs, models, openai, page, score
from service.serving import (
    CompletionService,
    DatasetService,
    GenerationService,
    JobService,
    ModelService,
    NextWordService,
    ScoringService,
)
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """Recurrent (LSTM/GRU) language models over HTTP: sequence scoring, perplexity,
next-word prediction, ranking of alternatives and generation. Errors are
`{"error": {"type", "message", "param"}}`."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.threads:
        import torch
        torch.set_num_threads(settings.threads)
    registry = ModelRegistry(settings)
    registry.reload()
    names = registry.names()
    if names:
        log.info("serving %d model(s) from %s: %s", len(names), settings.checkpoints, ", ".join(names))
    else:
        log.warning("no loadable model in %s; /ready answers 503 until one appears", settings.checkpoints)
    registry.start()
    app.state.registry = registry
    batcher = Batcher(settings)
    app.state.scoring = ScoringService(registry, batcher, settings)
    app.state.next_word = NextWordService(registry, settings)
    app.state.generation = GenerationService(registry, settings)
    app.state.completions = CompletionService(registry, batcher, settings)
    app.state.job_service = JobService(app.state.jobs, settings)
    app.state.model_service = ModelService(registry, settings)
    app.state.dataset_service = DatasetService(registry, settings)
    job_counts: JobCounts | None = JobCounts(app.state.jobs)  # rnnlm_jobs{status}, read from the db per scrape
    try:
        REGISTRY.register(job_counts)
    except ValueError:  # another app in this process (tests) already exports it
        job_counts = None
    # What is loaded now (modules, models, vocabularies: ~200k objects) lives as long as the server, so the
    # cyclic GC stops traversing it: a full collection of it held the GIL for ~0.2 s and stalled the event loop.
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()  # back under the collector: an app stopped in a longer-lived process (tests) can be freed
        if job_counts is not None:
            REGISTRY.unregister(job_counts)
        await batcher.close()
        registry.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; models are loaded when its lifespan starts (uvicorn, TestClient, ...)."""
    settings = settings or Settings()
    app = FastAPI(title="rnnlm-serve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # served offline by routes/page.py
    app.state.settings = settings
    app.state.jobs = JobStore(settings.jobs_db, stale_after_s=settings.job_stale_after_s)  # opened on first use
    for module in (health, models, score, generate, openai, jobs, datasets, page):
        inference = module in (score, generate, openai)  # these need the key when api_key_inference is set
        app.include_router(module.router, dependencies=[InferenceKeyDep] if inference else None)
    errors.install(app)
    app.add_middleware(errors.SurrogateMiddleware)  # innermost: lone surrogates in any JSON body become U+FFFD
    app.add_middleware(AdmissionMiddleware, settings=settings)  # inside the body limit: reads bodies through it
    app.add_middleware(errors.BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       path_limits={"/v1/datasets": settings.max_dataset_bytes})
    app.add_middleware(MetricsMiddleware, api=app)  # outermost but for CORS and the request id: sees every response
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", request_id.HEADER],
                           expose_headers=[request_id.HEADER, "Retry-After", "X-Context-Used", "X-Warnings"])
    request_id.install(app)  # added last = outermost: every log line of a request carries its id
    return app
