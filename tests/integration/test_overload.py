"""Overload and slow clients against a real `rnnlm serve` process: admission control answers the excess
503 + Retry-After at once, and a request that is not sent in time is closed."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
READ_TIMEOUT_S = 1.0
# A stream that outlives any socket buffer when its client stops reading: at a high temperature the
# tiny model rarely samples <eos>, so it holds its admission slot until the client closes it.
ENDLESS = {"prompt": "The film", "max_tokens": 100_000, "temperature": 50.0, "n": 4, "seed": 1, "stream": True}
REQUESTS = [("/v1/score", {"texts": ["The game was released in Japan ."]}),
            ("/v1/perplexity", {"texts": ["The game was released in Japan ."]}),
            ("/v1/rank", {"candidates": ["The game was released .", "The game were released ."]}),
            ("/v1/next-word", {"text": "The game was ", "k": 3}),
            ("/v1/generate", {"prompt": "The game", "max_tokens": 30, "seed": 2})]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model: Path, proc_tools) -> Iterator[str]:
    """A server that runs one inference request at a time and reads a request for at most 1 s."""
    tmp = tmp_path_factory.mktemp("overload")
    checkpoints = tmp / "checkpoints"
    checkpoints.mkdir()
    shutil.copytree(tiny_model, checkpoints / "lstm")
    port, log = proc_tools.free_port(), tmp / "serve.log"
    env = proc_tools.clean_env(RNNLM_ADMISSION_MIN_LIMIT="1", RNNLM_ADMISSION_MAX_LIMIT="1",
                               RNNLM_REQUEST_READ_TIMEOUT_S=str(READ_TIMEOUT_S), RNNLM_MAX_TOKENS="100000",
                               RNNLM_JOBS_DB=str(tmp / "jobs.db"))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                                 "--checkpoints", str(checkpoints), "--threads", "1"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        proc_tools.wait_ready(f"{url}/ready", proc, log, "rnnlm serve", timeout_s=90)
        yield url
    finally:
        proc_tools.stop(proc)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _assert_overloaded(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    error = r.json()["error"]
    assert error["type"] == "overloaded" and "retry after" in error["message"] and error["param"] is None


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.parametrize("payload", [
    b"",  # connected, sent nothing
    b"POST /v1/score HTTP/1.1\r\nHost: x\r\n",  # half the headers
    b'POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"texts":',
], ids=["nothing", "half-headers", "half-body"])
def test_a_stalled_request_is_closed_after_the_read_timeout(server: str, payload: bytes, processes) -> None:
    data = processes.read_until_closed(_port(server), payload)
    if b"\r\n\r\n" not in payload:  # no request was parsed: the server says why before it closes
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(body)["error"]["type"] == "request_timeout"
    else:  # the app was reading the body: the connection just closes
        assert data == b""
    assert httpx.get(f"{server}/health").status_code == 200


def test_a_client_that_trickles_its_request_is_closed_too(server: str) -> None:
    """The timeout bounds the whole request, not the gap between bytes."""
    with socket.create_connection(("127.0.0.1", _port(server))) as sock:
        sock.settimeout(30)
        closed = False
        for byte in b"POST /v1/score HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # reset: closed by the server
                closed = True
                break
            time.sleep(READ_TIMEOUT_S / 10)
        if not closed:
            assert sock.recv(4096).startswith(b"HTTP/1.1 408 "), "connection still open after 20 read timeouts"


def test_complete_requests_and_keep_alive_are_unaffected(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        for _ in range(3):
            assert client.post("/v1/score", json={"texts": ["The game ."]}).status_code == 200
        assert client.get("/health").status_code == 200


def test_over_the_limit_every_inference_route_gets_503_at_once(server: str, proc_tools) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        with client.stream("POST", "/v1/generate", json=ENDLESS) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()  # kept: a dropped iterator would close the stream
            next(lines)  # the stream is running: it holds the only slot
            for path, body in REQUESTS + [("/v1/generate", {**REQUESTS[-1][1], "stream": True})]:
                _assert_overloaded(client.post(path, json=body))
            with ThreadPoolExecutor(16) as pool:  # a burst of typists
                burst = list(pool.map(lambda i: httpx.post(f"{server}/v1/next-word", json={"text": f"The {i}"},
                                                           timeout=30), range(16)))
            for r in burst:
                _assert_overloaded(r)
            # Not inference: never refused
            assert client.get("/health").status_code == 200
            assert client.get("/v1/models").status_code == 200
            assert client.post("/v1/score", json={"texts": []}).status_code == 503  # refused before validation
        # The stream's client went away: its slot is freed once the server has noticed.
        proc_tools.wait_for(lambda: client.post("/v1/next-word", json={"text": "The"}).status_code == 200,
                            30, "the stream's slot to be released")
        for path, body in REQUESTS:
            r = client.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
    assert _metric(server, "rnnlm_admission_rejected_total", reason="limit") >= 22
    assert _metric(server, "rnnlm_admission_limit") == 1
    assert _metric(server, "rnnlm_admission_in_flight") == 0


def test_a_burst_far_over_the_limit_gets_successes_and_503s_never_5xx(server: str) -> None:
    def call(i: int) -> httpx.Response:
        path, body = REQUESTS[i % len(REQUESTS)]
        return httpx.post(f"{server}{path}", json=body, timeout=60)

    admitted_before = _metric(server, "rnnlm_admission_admitted_total")
    with ThreadPoolExecutor(30) as pool:
        responses = list(pool.map(call, range(60)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses, statuses
    for i, r in enumerate(responses):
        if r.status_code == 503:
            _assert_overloaded(r)
        elif REQUESTS[i % len(REQUESTS)][0] == "/v1/next-word":
            assert len(r.json()["predictions"]) == 3
    assert _metric(server, "rnnlm_admission_admitted_total") - admitted_before == statuses.count(200)
