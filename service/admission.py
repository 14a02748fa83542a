"""Admission control: bounded in-flight inference per process, the excess answered 503 at once.

Every POST under `/v1/` runs the model unless its path is declared in `EXEMPT_PREFIXES` (job
submission only writes a row), so a route added later is covered without being listed. A covered
request is refused with 503 + `Retry-After` (error type `overloaded`, like the batcher's full queue)
when

- it waited longer than `admission_max_wait_ms` between the server parsing its headers and the app
  seeing it (the event loop is behind: running it would only add to the backlog), or
- `limit` requests are already running.

The limit follows measured latency, after Netflix's concurrency-limits (Gradient2): each request
that ran on a loaded server compares its latency with its route's unloaded latency (learnt from
requests that ran alone or beside one other); while the ratio stays under `tolerance` the limit
grows by about its square root, above it the limit shrinks by the same ratio, and it shrinks too
while requests wait longer than a quarter of `admission_max_wait_ms` to be read (an event loop
behind, or a GIL shared by too many model threads). So the limit settles where admitted requests
take a few times their unloaded latency, whatever the hardware, model or mix of routes. The
micro-batcher's `max_queue` stays as the per-model backstop (with admission off, or a limit above it).
"""
from __future__ import annotations

import asyncio
import math

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.errors import error_response
from service.settings import Settings

EXEMPT_PREFIXES = ("/v1/jobs", "/v1/datasets")  # POSTs under /v1 that do not run a model
RECEIVED_AT = "rnnlm.received_at"  # scope["extensions"] key: loop.time() when the server parsed the headers


class GradientLimit:
    """A concurrency limit that adapts to latency. Runs on the event loop only: no locks."""

    def __init__(self, initial: int, min_limit: int, max_limit: int, tolerance: float = 3.0,
                 wait_target_s: float = 0.025, smoothing: float = 0.2) -> None:
        self.min_limit, self.max_limit = min_limit, max(min_limit, max_limit)
        self.tolerance, self.wait_target_s, self.smoothing = tolerance, wait_target_s, smoothing
        self.limit = float(self._clamp(initial))
        self.in_flight = 0
        self.ratio = 1.0  # short-term average of latency / unloaded latency (~10 requests)
        self.wait_s = 0.0  # short-term average of the time requests waited to be read (~10 requests)
        self._baselines: dict[str, float] = {}  # unloaded latency per route, seconds

    def _clamp(self, value: float) -> float:
        return min(self.max_limit, max(self.min_limit, value))

    @property
    def full(self) -> bool:
        return self.in_flight >= int(self.limit)

    def observe_wait(self, waited_s: float) -> None:
        """How long a request waited between the server parsing it and the app seeing it: a busy event
        loop (or a GIL shared with too many model threads) shows here before it shows in latency."""
        self.wait_s += (waited_s - self.wait_s) * 0.1

    def try_acquire(self) -> int | None:
        """Take a slot: the number of requests that were running, or None when the limit is reached."""
        if self.full:
            return None
        self.in_flight += 1
        return self.in_flight - 1

    def release(self, key: str, latency_s: float | None, running_at_start: int) -> None:
        """Give the slot back; `latency_s` of a successful request (None: no sample) updates the limit."""
        self.in_flight -= 1
        if latency_s is None or latency_s <= 0:
            return
        # The unloaded latency is learnt from requests that ran alone or beside one other, and from
        # faster ones: a loaded server must not learn its loaded latency as normal.
        base = self._baselines.get(key)
        if base is None:
            base = latency_s
        elif running_at_start <= 1 or latency_s < base:
            base += (latency_s - base) * 0.05
        self._baselines[key] = base
        self.ratio += (latency_s / base - self.ratio) * 0.1
        # Gradient2's "app-limited" test: with under half the limit in use, the limit was not what
        # bounded this request, so its latency says nothing about the limit.
        if running_at_start < self.limit / 2:
            return
        gradient = self.tolerance / self.ratio
        if self.wait_s > self.wait_target_s:
            gradient = min(gradient, self.wait_target_s / self.wait_s)
        gradient = max(0.5, min(1.0, gradient))
        target = self.limit * gradient + math.sqrt(self.limit)
        self.limit = self._clamp(self.limit * (1 - self.smoothing) + target * self.smoothing)


def covered(scope: Scope) -> bool:
    """Whether admission control applies: every POST under /v1 except the declared exemptions."""
    path = scope["path"]
    return scope["method"] == "POST" and path.startswith("/v1/") and not path.startswith(EXEMPT_PREFIXES)


async def _read_body(receive: Receive) -> tuple[list[Message], StarletteHTTPException | None]:
    """The request's messages up to the end of its body (or a disconnect), or the 413 raised on the way."""
    messages: list[Message] = []
    try:
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                return messages, None
    except StarletteHTTPException as exc:
        return messages, exc


def _replay(messages: list[Message], error: StarletteHTTPException | None, receive: Receive) -> Receive:
    """A receive() that hands out the messages already read, then the live ones."""
    pending = list(messages)

    async def replay() -> Message:
        if error is not None:
            raise error  # re-raised inside the app, where the error handlers turn it into the usual 413
        if pending:
            return pending.pop(0)
        return await receive()
    return replay


class AdmissionMiddleware:
    """Pure ASGI middleware: admit or refuse each covered request, and time the admitted ones.

    The body is read before a slot is taken, so a client that is slow to upload holds no slot
    (the server's read timeout closes it); an admitted request is timed from the end of its body
    to the end of its response (a stream: its last chunk).
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.enabled = settings.admission
        self.max_wait_s = settings.admission_max_wait_ms / 1000
        self.retry_after_s = settings.admission_retry_after_s
        self.limiter = GradientLimit(settings.admission_initial_limit, settings.admission_min_limit,
                                     settings.admission_max_limit, settings.admission_tolerance,
                                     wait_target_s=self.max_wait_s / 4)
        metrics.ADMISSION_LIMIT.set(int(self.limiter.limit) if self.enabled else 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled or not covered(scope):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        received_at = scope.get("extensions", {}).get(RECEIVED_AT)
        if received_at is not None:
            waited = loop.time() - received_at
            self.limiter.observe_wait(waited)
            if waited > self.max_wait_s:
                await self._refuse(scope, send, "wait", f"the server is overloaded (this request waited "
                                                        f"{waited * 1000:.0f} ms before it could be read)")
                return
        if self.limiter.full:
            await self._refuse(scope, send, "limit", self._busy())
            return
        messages, error = await _read_body(receive)
        if error is not None or messages[-1]["type"] == "http.disconnect":
            # Body over the limit (the app answers 413) or the client gone: nothing to run, no slot.
            await self.app(scope, _replay(messages, error, receive), send)
            return
        running = self.limiter.try_acquire()
        if running is None:
            await self._refuse(scope, send, "limit", self._busy())
            return
        metrics.ADMISSION_ADMITTED.inc()
        metrics.ADMISSION_IN_FLIGHT.set(self.limiter.in_flight)
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = loop.time()
        try:
            await self.app(scope, _replay(messages, None, receive), send_status)
        finally:
            # Only successes are latency samples: a 4xx is fast for reasons of its own.
            latency = loop.time() - start if status == 200 else None
            self.limiter.release(scope["path"], latency, running)
            metrics.ADMISSION_IN_FLIGHT.set(self.limiter.in_flight)
            metrics.ADMISSION_LIMIT.set(int(self.limiter.limit))

    def _busy(self) -> str:
        return f"the server is overloaded ({self.limiter.in_flight} requests running, the limit is " \
               f"{int(self.limiter.limit)})"

    async def _refuse(self, scope: Scope, send: Send, reason: str, message: str) -> None:
        metrics.ADMISSION_REJECTED.labels(reason).inc()
        response = error_response(503, "overloaded", f"{message}; retry after {self.retry_after_s} s",
                                  headers={"Retry-After": str(self.retry_after_s)})
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
