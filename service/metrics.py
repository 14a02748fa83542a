"""Prometheus metrics, defined once at module level (default registry: one process per replica).

Labels are bounded: `endpoint` is a route template (`/v1/models/{name}`, never a raw path),
`model` a loaded model's name or "none", `status` an HTTP status code.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from fastapi import FastAPI
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.jobs import STATUSES, JobStore

log = logging.getLogger(__name__)

REQUESTS = Counter("rnnlm_requests", "HTTP requests handled", ["endpoint", "model", "status"])
REQUEST_DURATION = Histogram(
    "rnnlm_request_duration_seconds", "Time from request to the last byte of the response",
    ["endpoint", "model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
IN_FLIGHT = Gauge("rnnlm_requests_in_flight", "Requests being handled right now", ["endpoint"])
TOKENS_SCORED = Counter("rnnlm_tokens_scored", "Tokens whose log-probability was computed", ["model"])
TOKENS_GENERATED = Counter("rnnlm_tokens_generated", "Tokens sampled by /v1/generate", ["model"])
MODELS_LOADED = Gauge("rnnlm_models_loaded", "Models currently served")
MODEL_LOAD_FAILURES = Counter("rnnlm_model_load_failures", "Model folders that failed to load")
BATCH_QUEUE_DEPTH = Gauge("rnnlm_batch_queue_depth", "Scoring requests waiting for the micro-batcher", ["model"])
BATCH_SIZE = Histogram("rnnlm_batch_size", "Texts per merged engine call of the micro-batcher", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
STATE_CACHE_HITS = Counter("rnnlm_state_cache_hits", "Next-word/generate prompts that resumed from a cached "
                                                     "recurrent state", ["model"])
STATE_CACHE_MISSES = Counter("rnnlm_state_cache_misses", "Prompts read from the start (no cached prefix)", ["model"])
STATE_CACHE_EVICTIONS = Counter("rnnlm_state_cache_evictions", "Cached states dropped to stay within the "
                                                               "memory bound", ["model"])
STATE_CACHE_BYTES = Gauge("rnnlm_state_cache_bytes", "Memory held by the recurrent-state cache", ["model"])
ADMISSION_ADMITTED = Counter("rnnlm_admission_admitted", "Inference requests admitted by admission control")
ADMISSION_REJECTED = Counter("rnnlm_admission_rejected", "Inference requests answered 503 by admission control: "
                                                         "limit reached, or waited too long to be read", ["reason"])
ADMISSION_LIMIT = Gauge("rnnlm_admission_limit", "Current limit on inference requests running at once")
ADMISSION_IN_FLIGHT = Gauge("rnnlm_admission_in_flight", "Inference requests admitted and running")
MODEL_DEVICE = Gauge("rnnlm_model_device_info", "1 per served model, labelled with the device it runs on and the "
                     "precision of its recurrent layers", ["model", "device", "dtype"])
_model_devices: dict[str, tuple[str, str]] = {}


def model_device(model: str, device: str | None, dtype: str = "float32") -> None:
    """Record where a model is served (`device` None: it is no longer served)."""
    old = _model_devices.pop(model, None)
    if old is not None:
        MODEL_DEVICE.remove(model, *old)
    if device is not None:
        _model_devices[model] = (device, dtype)
        MODEL_DEVICE.labels(model, device, dtype).set(1)


def state_cache_listener(model: str) -> Callable[[str, int], None]:
    """Feeds a new engine's StateCache events into the metrics above (models/ knows nothing of prometheus)."""
    counters = {"hit": STATE_CACHE_HITS.labels(model), "miss": STATE_CACHE_MISSES.labels(model),
                "eviction": STATE_CACHE_EVICTIONS.labels(model)}
    size = STATE_CACHE_BYTES.labels(model)
    size.set(0)  # a new engine starts with an empty cache

    def listener(event: str, value: int) -> None:
        if event == "bytes":
            size.set(value)
        else:
            counters[event].inc(value)
    return listener


class JobCounts(Collector):
    """`rnnlm_jobs{status}`: read from the database at scrape time, so every process agrees."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("rnnlm_jobs", "Jobs in the job store by status", labels=["status"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("rnnlm_jobs", "Jobs in the job store by status", labels=["status"])
        counts = dict.fromkeys(STATUSES, 0)
        try:
            if self.store.exists():  # never create the database just to report that it is empty
                counts = self.store.counts()
        except Exception as exc:  # a scrape must not fail because the database is busy, down or broken
            log.warning("cannot count jobs in %s: %s", self.store, exc)
        for status, n in counts.items():
            family.add_metric([status], n)
        yield family


# The labels of the request being handled (the middleware's per-request dict), so that the serving
# layer can name the model it used without holding the HTTP request.
_request_labels: ContextVar[dict | None] = ContextVar("rnnlm_request_labels", default=None)


def label_model(name: str) -> None:
    """Label the current request's metrics with the model that serves it (no-op outside a request)."""
    labels = _request_labels.get()
    if labels is not None:
        labels["model"] = name


UNMATCHED = "unmatched"  # endpoint label for paths that match no route (404s)
NO_MODEL = "none"


class RouteTemplates:
    """Maps a request path to its route template (`/v1/models/{name}`) before the router runs,
    so that the in-flight gauge can be labelled on the way in."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def _build(self) -> list[tuple[re.Pattern[str], str]]:
        paths = list(self.app.openapi().get("paths", {}))
        paths += [r.path for r in self.app.routes if isinstance(getattr(r, "path", None), str)]
        return [(compile_path(p)[0], p) for p in dict.fromkeys(paths)]

    def match(self, scope: Scope) -> str:
        if self._compiled is None:
            self._compiled = self._build()
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        return next((template for regex, template in self._compiled if regex.match(path)), UNMATCHED)


class MetricsMiddleware:
    """Pure ASGI middleware: counts, times and gauges every HTTP request by route template.

    The serving layer names the model it used with `label_model` (stored in the request's state);
    the middleware reads it afterwards.
    Streaming responses are timed until their last chunk.
    """

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.templates = RouteTemplates(api)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.templates.match(scope)
        state = scope.setdefault("state", {})
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        in_flight = IN_FLIGHT.labels(endpoint)
        in_flight.inc()
        token = _request_labels.set(state)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            _request_labels.reset(token)
            in_flight.dec()
            model = state.get("model") or NO_MODEL
            REQUESTS.labels(endpoint, model, str(status)).inc()
            REQUEST_DURATION.labels(endpoint, model).observe(time.perf_counter() - start)
