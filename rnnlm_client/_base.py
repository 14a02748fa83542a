"""What the sync and async clients share: settings, the API's routes as request descriptions, retry
policy, error mapping and the server-sent-event parser. No I/O happens here."""
from __future__ import annotations

import email.utils
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from rnnlm_client import types as t
from rnnlm_client.errors import StreamError, error_for

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = (429, 503)
MAX_RETRY_AFTER_S = 60.0
DONE = "[DONE]"


@dataclass
class Call:
    """One API request: what to send and how to read the answer."""
    method: str
    path: str
    cast: Callable[[Any], Any]
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    idempotent: bool = True          # safe to send again after a broken connection
    accept: tuple[int, ...] = ()     # non-2xx statuses whose body is a result, not an error
    retry: bool = True


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _list_of(cls: type[t.Result], key: str = "data") -> Callable[[Any], list]:
    return lambda body: [cls.model_validate(item) for item in body[key]]


@dataclass
class Options:
    base_url: str
    api_key: str | None
    timeout: float | httpx.Timeout
    max_retries: int
    backoff_s: float
    max_backoff_s: float
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, base_url: str | None, api_key: str | None, timeout: float | httpx.Timeout, max_retries: int,
             backoff_s: float, max_backoff_s: float, headers: dict[str, str] | None) -> Options:
        """Defaults from the environment: `RNNLM_URL` (else http://127.0.0.1:8000) and `RNNLM_API_KEY`."""
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        url = (base_url or os.environ.get("RNNLM_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("RNNLM_API_KEY") or None
        sent = {"Accept": "application/json", **(headers or {})}
        if key:
            sent["Authorization"] = f"Bearer {key}"
        return cls(url, key, timeout, max_retries, backoff_s, max_backoff_s, sent)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (`Retry-After`: seconds or an HTTP date), capped at a minute."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def backoff(options: Options, attempt: int, response: httpx.Response | None = None) -> float:
    """The server's Retry-After if it gave one, else exponential backoff with jitter."""
    if response is not None and (asked := retry_after(response)) is not None:
        return asked
    return min(options.max_backoff_s, options.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)


def should_retry_status(call: Call, options: Options, response: httpx.Response, attempt: int) -> bool:
    # A 503 or 429 means the request was turned away before any work: safe to resend any call.
    return call.retry and attempt < options.max_retries and response.status_code in RETRY_STATUSES


def should_retry_error(call: Call, options: Options, exc: httpx.TransportError, attempt: int) -> bool:
    if not call.retry or attempt >= options.max_retries:
        return False
    # Refused connections never reached the server; anything later only for calls without side effects.
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) or call.idempotent


def decode(call: Call, response: httpx.Response) -> Any:
    """The call's typed result, or the APIError for an error status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success or response.status_code in call.accept:
        if body is None:
            return call.cast(response.text)
        return call.cast(body)
    raise error_for(response.status_code, body, response.text, dict(response.headers))


class SSEParser:
    """Incremental server-sent-event parser: feed it lines, it returns the finished events' payloads."""

    def __init__(self) -> None:
        self.data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r")
        if line == "":
            if self.data:
                payload, self.data = "\n".join(self.data), []
                return payload
            return None
        if line.startswith("data:"):
            self.data.append(line[5:].removeprefix(" "))
        return None  # comments (": ping"), event names and ids carry nothing we use

    def flush(self) -> str | None:
        return self.feed("")


def stream_chunk(payload: str) -> t.StreamChunk | None:
    """One event's chunk; None at `[DONE]`; an in-band error raises StreamError."""
    if payload.strip() == DONE:
        return None
    body = json.loads(payload)
    if "error" in body:
        detail = body["error"] or {}
        raise StreamError(str(detail.get("message", "")), type=detail.get("type"), param=detail.get("param"),
                          body=body)
    return t.StreamChunk.model_validate(body)


class Routes:
    """The API's routes, once for both clients: each method hands a Call to `self._request`, which
    returns the result (Client) or a coroutine of it (AsyncClient)."""

    def _request(self, call: Call) -> Any:
        raise NotImplementedError

    def health(self):
        """GET /health: 200 while the server process runs."""
        return self._request(Call("GET", "/health", t.Health.model_validate))

    def ready(self):
        """GET /ready: `Ready.ready` is false (not an error) while no model is loaded yet."""
        return self._request(Call("GET", "/ready", t.Ready.model_validate, accept=(503,), retry=False))

    def metrics(self):
        """GET /metrics: the Prometheus text exposition."""
        return self._request(Call("GET", "/metrics", str))

    def score(self, texts: list[str], *, model: str | None = None, add_eos: bool = True, details: bool = False,
              context: str | None = None):
        """Natural-log probability of each text; `details=True` adds per-token scores."""
        body = _drop_none({"model": model, "texts": list(texts), "add_eos": add_eos, "details": details,
                           "context": context})
        return self._request(Call("POST", "/v1/score", t.ScoreResponse.model_validate, body))

    def perplexity(self, texts: list[str], *, model: str | None = None, context: str | None = None):
        """Perplexity over all tokens of all texts, and per text."""
        body = _drop_none({"model": model, "texts": list(texts), "context": context})
        return self._request(Call("POST", "/v1/perplexity", t.PerplexityResponse.model_validate, body))

    def rank(self, candidates: list[str], *, model: str | None = None, context: str | None = None):
        """Candidates best first by log-probability."""
        body = _drop_none({"model": model, "candidates": list(candidates), "context": context})
        return self._request(Call("POST", "/v1/rank", t.RankResponse.model_validate, body))

    def next_word(self, text: str, *, k: int | None = None, model: str | None = None, context: str | None = None):
        """The k most probable next words; completes a half-typed last word (no trailing space)."""
        body = _drop_none({"model": model, "text": text, "k": k, "context": context})
        return self._request(Call("POST", "/v1/next-word", t.NextWordResponse.model_validate, body))

    @staticmethod
    def _generate_body(prompt: str, params: dict[str, Any]) -> dict[str, Any]:
        return _drop_none({"prompt": prompt, **params})

    def _generate(self, prompt: str, params: dict[str, Any]):
        body = self._generate_body(prompt, params)
        return self._request(Call("POST", "/v1/generate", t.GenerateResponse.model_validate, body))

    def _stream_call(self, prompt: str, params: dict[str, Any]) -> Call:
        """The streamed generation's request: its chunks are read by the client's stream, not `_request`."""
        return Call("POST", "/v1/generate", t.StreamChunk.model_validate,
                    self._generate_body(prompt, params) | {"stream": True})

    def list_models(self):
        """GET /v1/models: every served model's card."""
        return self._request(Call("GET", "/v1/models", _list_of(t.ModelCard)))

    def get_model(self, name: str):
        """GET /v1/models/{name}: a model by name or alias (NotFoundError if none)."""
        return self._request(Call("GET", f"/v1/models/{_segment(name)}", t.ModelCard.model_validate))

    def submit_job(self, type: str, name: str, data: str, **params: Any):
        """POST /v1/jobs: queue a `train` or `distill` job; params use the `rnnlm train` flag names."""
        body = _drop_none({"type": type, "name": name, "data": data, **params})
        return self._request(Call("POST", "/v1/jobs", t.JobCreated.model_validate, body, idempotent=False))

    def list_jobs(self, *, status: str | None = None, limit: int | None = None):
        """GET /v1/jobs: newest first, optionally only those with one status."""
        params = _drop_none({"status": status, "limit": limit})
        return self._request(Call("GET", "/v1/jobs", _list_of(t.Job), params=params))

    def get_job(self, job_id: str):
        return self._request(Call("GET", f"/v1/jobs/{_segment(job_id)}", t.Job.model_validate))

    def cancel_job(self, job_id: str):
        """A queued job is cancelled at once; a running one stops at its next step (`cancel_requested`)."""
        return self._request(Call("POST", f"/v1/jobs/{_segment(job_id)}/cancel", t.Job.model_validate,
                                  idempotent=False))


def _segment(value: str) -> str:
    """A path segment, percent-encoded (a name with `/` must not reach another route)."""
    from urllib.parse import quote
    return quote(value, safe="")


def job_outcome(job: t.Job) -> t.Job:
    """The finished job if it succeeded; JobFailedError or JobCancelledError otherwise."""
    from rnnlm_client.errors import JobCancelledError, JobFailedError
    if job.status == "failed":
        raise JobFailedError(f"job {job.id} ({job.name}) failed: {job.error}", job)
    if job.status == "cancelled":
        raise JobCancelledError(f"job {job.id} ({job.name}) was cancelled", job)
    return job


def progress_key(job: t.Job) -> tuple:
    """What changes when a job moves on (a new status, attempt or progress report)."""
    return job.status, job.attempts, job.cancel_requested, job.progress.model_dump() if job.progress else None
