"""`Client` (blocking) and `AsyncClient` (asyncio) for an rnnlm-serve server, over httpx.

    from rnnlm_client import Client
    with Client("http://127.0.0.1:8000") as client:
        client.score(["The album was released in 1999 ."]).results[0].logprob
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from rnnlm_client import types as t
from rnnlm_client._base import (
    Call,
    Options,
    Routes,
    SSEParser,
    backoff,
    decode,
    job_outcome,
    progress_key,
    should_retry_error,
    should_retry_status,
    stream_chunk,
)
from rnnlm_client.errors import APIConnectionError, APITimeoutError

GENERATE_PARAMS = ("model", "context", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "n")


def _transport_error(exc: httpx.TransportError, url: str) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"no answer from {url} in time ({type(exc).__name__})")
    return APIConnectionError(f"cannot reach {url}: {exc or type(exc).__name__}")


def _stream_headers(response: httpx.Response) -> tuple[bool, list[str]]:
    warnings = response.headers.get("x-warnings")
    return response.headers.get("x-context-used") == "true", warnings.split("; ") if warnings else []


class _ClientBase(Routes):
    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 timeout: float | httpx.Timeout = 60.0, max_retries: int = 2, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0, headers: dict[str, str] | None = None) -> None:
        """`base_url` defaults to $RNNLM_URL, else http://127.0.0.1:8000; `api_key` to $RNNLM_API_KEY.

        A 503 or 429 is retried up to `max_retries` times, after the server's Retry-After (or an
        exponential backoff); so is a broken connection, for calls without side effects.
        """
        self.options = Options.make(base_url, api_key, timeout, max_retries, backoff_s, max_backoff_s, headers)

    @property
    def base_url(self) -> str:
        return self.options.base_url


# ---- blocking ---------------------------------------------------------------------------------------
class GenerationStream:
    """Chunks of a streamed generation as they arrive; `context_used` and `warnings` from the headers."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.context_used, self.warnings = _stream_headers(response)

    def __iter__(self) -> Iterator[t.StreamChunk]:
        parser = SSEParser()
        try:
            for line in self.response.iter_lines():
                if (payload := parser.feed(line)) is None:
                    continue
                if (chunk := stream_chunk(payload)) is None:  # [DONE]
                    return
                yield chunk
            if (payload := parser.flush()) is not None and (chunk := stream_chunk(payload)) is not None:
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(_ClientBase):
    """Blocking client. Methods return typed results (`rnnlm_client.types`) and raise `APIError`
    subclasses with the server's error `type`, `message` and `param`."""

    def __init__(self, base_url: str | None = None, *, transport: httpx.BaseTransport | None = None,
                 **options: Any) -> None:
        super().__init__(base_url, **options)
        self._http = httpx.Client(base_url=self.options.base_url, headers=self.options.headers,
                                  timeout=self.options.timeout, transport=transport)
        self.models = Models(self)
        self.jobs = Jobs(self)

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        """The response to `call` after retries (an open stream when `stream`); errors raise."""
        attempt = 0
        while True:
            request = self._http.build_request(call.method, call.path, json=call.json, params=call.params)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not should_retry_error(call, self.options, exc, attempt):
                    raise _transport_error(exc, self.base_url) from exc
                self._sleep(backoff(self.options, attempt))
                attempt += 1
                continue
            if should_retry_status(call, self.options, response, attempt):
                response.close()
                self._sleep(backoff(self.options, attempt, response))
                attempt += 1
                continue
            return response

    def _request(self, call: Call) -> Any:
        return decode(call, self._send(call))

    def generate(self, prompt: str = "", *, stream: bool = False, **params: Any):
        """Continue `prompt` (params: model, context, max_tokens, temperature, top_k, top_p, seed, stop, n).
        With `stream=True`, a GenerationStream of chunks instead of a GenerateResponse."""
        _check_params(params)
        return self.stream_generate(prompt, **params) if stream else self._generate(prompt, params)

    def stream_generate(self, prompt: str = "", **params: Any) -> GenerationStream:
        _check_params(params)
        call = self._stream_call(prompt, params)
        response = self._send(call, stream=True)
        if not response.is_success:
            response.read()
            response.close()
            decode(call, response)  # raises the APIError
        return GenerationStream(response)

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> t.Ready:
        """Poll /ready until a model is loaded (the server may still be starting); APITimeoutError if not."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready = self.ready()
                if ready.ready:
                    return ready
            except APIConnectionError:
                pass
            if time.monotonic() > deadline:
                raise APITimeoutError(f"{self.base_url} not ready after {timeout:g} s")
            self._sleep(interval)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Models:
    def __init__(self, client: Routes) -> None:
        self._client = client

    def list(self):
        return self._client.list_models()

    def get(self, name: str):
        return self._client.get_model(name)


class _JobsBase:
    def __init__(self, client: Routes) -> None:
        self._client = client

    def submit(self, type: str, name: str, data: str, **params: Any):
        return self._client.submit_job(type, name, data, **params)

    def list(self, *, status: str | None = None, limit: int | None = None):
        return self._client.list_jobs(status=status, limit=limit)

    def get(self, job_id: str):
        return self._client.get_job(job_id)

    def cancel(self, job_id: str):
        return self._client.cancel_job(job_id)


class Jobs(_JobsBase):
    _client: Client

    def follow(self, job_id: str, *, poll_interval: float = 1.0, timeout: float | None = None) -> Iterator[t.Job]:
        """The job each time its status or progress changes, ending with it finished (whatever the outcome)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            job = self.get(job_id)
            if (key := progress_key(job)) != last:
                last = key
                yield job
            if job.finished:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise APITimeoutError(f"job {job_id} still {job.status} after {timeout:g} s")
            self._client._sleep(poll_interval)

    def wait(self, job_id: str, on_progress: Callable[[t.Job], object] | None = None, *,
             poll_interval: float = 1.0, timeout: float | None = None) -> t.Job:
        """Follow the job to its end (calling `on_progress` at each change) and return it once it succeeded;
        JobFailedError or JobCancelledError otherwise."""
        job = None
        for job in self.follow(job_id, poll_interval=poll_interval, timeout=timeout):
            if on_progress is not None:
                on_progress(job)
        return job_outcome(job)


def _check_params(params: dict[str, Any]) -> None:
    unknown = set(params) - set(GENERATE_PARAMS)
    if unknown:
        raise TypeError(f"generate() got unexpected parameters: {', '.join(sorted(unknown))}")


# ---- asyncio ----------------------------------------------------------------------------------------
class AsyncGenerationStream:
    """`async for chunk in stream`: chunks of a streamed generation as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.context_used, self.warnings = _stream_headers(response)

    async def __aiter__(self) -> AsyncIterator[t.StreamChunk]:
        parser = SSEParser()
        try:
            async for line in self.response.aiter_lines():
                if (payload := parser.feed(line)) is None:
                    continue
                if (chunk := stream_chunk(payload)) is None:  # [DONE]
                    return
                yield chunk
            if (payload := parser.flush()) is not None and (chunk := stream_chunk(payload)) is not None:
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self.response.aclose()

    async def __aenter__(self) -> AsyncGenerationStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncClient(_ClientBase):
    """The same API as `Client`, with `await` (and `async for` over streams and `jobs.follow`)."""

    def __init__(self, base_url: str | None = None, *, transport: httpx.AsyncBaseTransport | None = None,
                 **options: Any) -> None:
        super().__init__(base_url, **options)
        self._http = httpx.AsyncClient(base_url=self.options.base_url, headers=self.options.headers,
                                       timeout=self.options.timeout, transport=transport)
        self.models = Models(self)
        self.jobs = AsyncJobs(self)

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            request = self._http.build_request(call.method, call.path, json=call.json, params=call.params)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not should_retry_error(call, self.options, exc, attempt):
                    raise _transport_error(exc, self.base_url) from exc
                await self._sleep(backoff(self.options, attempt))
                attempt += 1
                continue
            if should_retry_status(call, self.options, response, attempt):
                await response.aclose()
                await self._sleep(backoff(self.options, attempt, response))
                attempt += 1
                continue
            return response

    async def _request(self, call: Call) -> Any:
        return decode(call, await self._send(call))

    async def generate(self, prompt: str = "", *, stream: bool = False, **params: Any):
        _check_params(params)
        if stream:
            return await self.stream_generate(prompt, **params)
        return await self._generate(prompt, params)

    async def stream_generate(self, prompt: str = "", **params: Any) -> AsyncGenerationStream:
        _check_params(params)
        call = self._stream_call(prompt, params)
        response = await self._send(call, stream=True)
        if not response.is_success:
            await response.aread()
            await response.aclose()
            decode(call, response)
        return AsyncGenerationStream(response)

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> t.Ready:
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready = await self.ready()
                if ready.ready:
                    return ready
            except APIConnectionError:
                pass
            if time.monotonic() > deadline:
                raise APITimeoutError(f"{self.base_url} not ready after {timeout:g} s")
            await self._sleep(interval)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncJobs(_JobsBase):
    _client: AsyncClient

    async def follow(self, job_id: str, *, poll_interval: float = 1.0,
                     timeout: float | None = None) -> AsyncIterator[t.Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            job = await self.get(job_id)
            if (key := progress_key(job)) != last:
                last = key
                yield job
            if job.finished:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise APITimeoutError(f"job {job_id} still {job.status} after {timeout:g} s")
            await self._client._sleep(poll_interval)

    async def wait(self, job_id: str, on_progress: Callable[[t.Job], object] | None = None, *,
                   poll_interval: float = 1.0, timeout: float | None = None) -> t.Job:
        job = None
        async for job in self.follow(job_id, poll_interval=poll_interval, timeout=timeout):
            if on_progress is not None:
                on_progress(job)
        return job_outcome(job)
