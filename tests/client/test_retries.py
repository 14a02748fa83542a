"""The client's transport logic alone, against httpx.MockTransport: retries and Retry-After, which calls are
resent after a broken connection, headers, defaults from the environment, error mapping, SSE parsing,
and wait() on jobs that fail."""
from __future__ import annotations

import json

import httpx
import pytest

from rnnlm_client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    Client,
    InternalServerError,
    JobFailedError,
    OverloadedError,
    StreamError,
)

OVERLOADED = {"error": {"type": "overloaded", "message": "model 'lstm' is overloaded", "param": None}}
SCORED = {"model": "lstm", "context_used": False, "warnings": [],
          "results": [{"text": "a", "logprob": -3.0, "num_tokens": 2, "perplexity": 4.48, "oov_count": 0}]}


class Script:
    """A MockTransport handler answering from a list (a response, or an exception to raise)."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client_for(script: Script, **options) -> tuple[Client, list[float]]:
    client = Client("http://rnnlm.test", transport=httpx.MockTransport(script), **options)
    slept: list[float] = []
    client._sleep = slept.append
    return client, slept


def busy(retry_after: str | None = "2") -> httpx.Response:
    return httpx.Response(503, json=OVERLOADED, headers={"Retry-After": retry_after} if retry_after else {})


def test_503_is_retried_after_retry_after() -> None:
    script = Script(busy("2"), busy("1"), httpx.Response(200, json=SCORED))
    client, slept = client_for(script)
    assert client.score(["a"]).results[0].logprob == -3.0
    assert slept == [2.0, 1.0] and len(script.requests) == 3
    assert json.loads(script.requests[-1].content) == {"texts": ["a"], "add_eos": True, "details": False}


def test_retries_run_out_with_the_servers_error() -> None:
    client, slept = client_for(Script(busy(), busy(), busy()), max_retries=2)
    with pytest.raises(OverloadedError) as err:
        client.score(["a"])
    assert (err.value.status, err.value.type, err.value.param) == (503, "overloaded", None)
    assert err.value.headers["retry-after"] == "2" and len(slept) == 2
    client, slept = client_for(Script(busy()), max_retries=0)
    with pytest.raises(OverloadedError):
        client.score(["a"])
    assert slept == []


def test_backoff_without_retry_after_grows_and_is_capped() -> None:
    client, slept = client_for(Script(busy(None), busy(None), busy(None), busy(None)), max_retries=3,
                               backoff_s=1.0, max_backoff_s=3.0)
    with pytest.raises(OverloadedError):
        client.health()
    assert [0.5 <= s <= 1.0 for s in slept[:1]] == [True] and 1.0 <= slept[1] <= 2.0 and 1.5 <= slept[2] <= 3.0


def test_http_date_retry_after_and_huge_values_are_capped() -> None:
    client, slept = client_for(Script(busy("Wed, 21 Oct 2015 07:28:00 GMT"), busy("86400"),
                                      httpx.Response(200, json={"status": "ok"})))
    assert client.health().status == "ok"
    assert slept == [0.0, 60.0]  # a date in the past: at once; a day: at most a minute


def test_broken_connections_are_retried_only_for_calls_without_side_effects() -> None:
    script = Script(httpx.ReadError("reset"), httpx.Response(200, json=SCORED))
    client, slept = client_for(script)
    assert client.score(["a"]).model == "lstm" and len(slept) == 1

    script = Script(httpx.ReadError("reset"), httpx.Response(202, json={"id": "j", "status": "queued"}))
    client, slept = client_for(script)
    with pytest.raises(APIConnectionError):  # the job may have been queued: never submitted twice
        client.jobs.submit("train", "x", "/data/wt2")
    assert len(script.requests) == 1 and slept == []

    script = Script(httpx.ConnectError("refused"), httpx.Response(202, json={"id": "j", "status": "queued"}))
    client, slept = client_for(script)
    assert client.jobs.submit("train", "x", "/data/wt2").id == "j"  # never reached the server: safe

    client, _ = client_for(Script(httpx.ReadTimeout("slow"), httpx.ReadTimeout("slow"), httpx.ReadTimeout("slow")))
    with pytest.raises(APITimeoutError):
        client.score(["a"])


def test_key_url_and_headers_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("RNNLM_URL", "http://from-env:9000/")
    monkeypatch.setenv("RNNLM_API_KEY", "env-key")
    script = Script(httpx.Response(200, json={"data": []}))
    client = Client(transport=httpx.MockTransport(script))
    assert client.base_url == "http://from-env:9000" and client.jobs.list() == []
    sent = script.requests[0]
    assert str(sent.url) == "http://from-env:9000/v1/jobs" and sent.headers["authorization"] == "Bearer env-key"

    monkeypatch.delenv("RNNLM_URL")
    monkeypatch.delenv("RNNLM_API_KEY")
    script = Script(httpx.Response(200, json={"data": []}))
    client = Client(transport=httpx.MockTransport(script))
    assert client.base_url == "http://127.0.0.1:8000" and client.jobs.list(status="failed", limit=3) == []
    assert "authorization" not in script.requests[0].headers
    assert script.requests[0].url.params == httpx.QueryParams({"status": "failed", "limit": "3"})


def test_errors_without_the_error_shape() -> None:
    client, _ = client_for(Script(httpx.Response(502, text="Bad Gateway")))
    with pytest.raises(InternalServerError) as err:
        client.health()
    assert err.value.status == 502 and err.value.message == "Bad Gateway" and err.value.type is None


def sse(*events: str) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream", "x-context-used": "true",
                                        "x-warnings": "a; b"},
                          content="".join(e + "\r\n" if e.startswith(":") else f"data: {e}\r\n\r\n"
                                          for e in events).encode())


def chunk(token: str | None, text: str, finish: str | None = None) -> str:
    return json.dumps({"index": 0, "token": token, "text": text, "logprob": None if finish else -1.5,
                       "finish_reason": finish})


def test_stream_parsing_and_in_band_errors() -> None:
    client, _ = client_for(Script(sse(chunk("a", "a"), ": ping", chunk(None, "a", "length"), "[DONE]")))
    stream = client.generate("x", stream=True)
    assert stream.context_used is True and stream.warnings == ["a", "b"]
    chunks = list(stream)
    assert [c.token for c in chunks] == ["a", None] and chunks[-1].finish_reason == "length"

    failing = json.dumps({"error": {"type": "generation_error", "message": "boom", "param": None}})
    client, _ = client_for(Script(sse(chunk("a", "a"), failing)))
    with pytest.raises(StreamError, match="boom"):
        list(client.stream_generate("x"))

    client, slept = client_for(Script(busy("1"), sse(chunk(None, "", "eos"), "[DONE]")))
    assert [c.finish_reason for c in client.stream_generate("x")] == ["eos"] and slept == [1.0]


def job(status: str, epoch: int | None = None, error: str | None = None) -> httpx.Response:
    return httpx.Response(200, json={"id": "j1", "type": "train", "name": "m", "status": status,
                                     "progress": {"epoch": epoch, "epochs": 3} if epoch else None,
                                     "error": error, "attempts": 1})


def test_wait_reports_each_change_and_raises_on_failure() -> None:
    script = Script(job("queued"), job("queued"), job("running", 1), job("running", 1), job("running", 2),
                    job("failed", 2, "out of memory"))
    client, slept = client_for(script)
    seen = []
    with pytest.raises(JobFailedError, match="out of memory") as err:
        client.jobs.wait("j1", lambda j: seen.append((j.status, j.progress and j.progress.epoch)), poll_interval=0.5)
    assert seen == [("queued", None), ("running", 1), ("running", 2), ("failed", 2)]
    assert err.value.job.error == "out of memory" and slept == [0.5] * 5

    client, _ = client_for(Script(job("running", 1), job("succeeded", 3)))
    assert [j.status for j in client.jobs.follow("j1")] == ["running", "succeeded"]


def test_async_client_retries_and_waits(run_async) -> None:
    async def main() -> None:
        script = Script(busy("3"), httpx.Response(200, json=SCORED), job("running", 1), job("succeeded", 3))
        client = AsyncClient("http://rnnlm.test", transport=httpx.MockTransport(script))
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        client._sleep = sleep
        assert (await client.score(["a"])).results[0].num_tokens == 2
        finished = await client.jobs.wait("j1", poll_interval=0.25)
        assert finished.status == "succeeded" and slept == [3.0, 0.25]
        await client.aclose()

    run_async(main())
