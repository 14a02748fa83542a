"""The server's HTTP protocol (service/server.py) as a real process, on httptools + uvloop (the default)
and on h11 + asyncio (RNNLM_HTTP=h11): the request-read timeout, the admission stamp on each request's
scope, keep-alive and pipelining, and the API's error body for a request the parser cannot read."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.server import build_server
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
READ_TIMEOUT_S = 0.5
# A tiny app on the server's protocol: /stamp says what the protocol put on the scope and which loop runs it;
# /echo reads the whole body, so a request cut short mid-body leaves it waiting for the rest.
APP = textwrap.dedent("""
    import asyncio, sys
    from fastapi import FastAPI, Request
    from service.admission import RECEIVED_AT
    from service.server import build_server
    from service.settings import Settings

    app = FastAPI()

    @app.get("/stamp")
    async def stamp(request: Request) -> dict:
        loop = asyncio.get_running_loop()
        return {"received_at": request.scope.get("extensions", {}).get(RECEIVED_AT), "now": loop.time(),
                "loop": type(loop).__module__}

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"length": len(await request.body())}

    build_server(app, Settings(port=int(sys.argv[1])), log_level="warning").run()
""")
PROTOCOLS = {"httptools": {}, "h11": {"RNNLM_HTTP": "h11", "RNNLM_LOOP": "asyncio"}}


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def port(request, tmp_path_factory, proc_tools) -> Iterator[int]:
    port, log = proc_tools.free_port(), tmp_path_factory.mktemp("protocol") / "serve.log"
    env = proc_tools.clean_env(RNNLM_REQUEST_READ_TIMEOUT_S=str(READ_TIMEOUT_S), **PROTOCOLS[request.param])
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", APP, str(port)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        proc_tools.wait_ready(f"http://127.0.0.1:{port}/stamp", proc, log, "the protocol's server", timeout_s=60)
        yield port
    finally:
        proc_tools.stop(proc)


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (with Content-Length) from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = sock.recv(4096)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    return data


def _content_length(data: bytes) -> int:
    lines = data.partition(b"\r\n\r\n")[0].split(b"\r\n")
    return next(int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                if k.strip().lower() == b"content-length")


def _responses(data: bytes) -> list[tuple[bytes, dict]]:
    """Split a byte stream of HTTP/1.1 responses with Content-Length into (status line, JSON body)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = _content_length(data)
        out.append((head.split(b"\r\n")[0], json.loads(rest[:length])))
        data = rest[length:]
    return out


def test_the_default_server_runs_httptools_on_uvloop() -> None:
    config = build_server(None, Settings()).config  # type: ignore[arg-type]
    assert issubclass(config.http, HttpToolsProtocol) and config.loop == "auto"  # auto: uvloop when installed
    h11 = build_server(None, Settings(http="h11", loop="asyncio")).config  # type: ignore[arg-type]
    assert issubclass(h11.http, H11Protocol) and h11.loop == "asyncio"


def test_the_server_runs_on_the_loop_it_was_given(port: int, request) -> None:
    loop = httpx.get(f"http://127.0.0.1:{port}/stamp").json()["loop"]
    assert loop.startswith("uvloop" if request.node.callspec.params["port"] == "httptools" else "asyncio")


def test_each_pipelined_request_is_stamped_and_answered_in_order(port: int, processes) -> None:
    get = b"GET /stamp HTTP/1.1\r\nHost: x\r\n\r\n"
    post = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    last = b"GET /stamp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    data = processes.read_until_closed(port, get + post + get + last)
    answers = _responses(data)
    assert [status for status, _ in answers] == [b"HTTP/1.1 200 OK"] * 4
    assert answers[1][1] == {"length": 5}
    stamps = [body for _, body in answers if "received_at" in body]
    assert len(stamps) == 3
    for body in stamps:  # parsed before the app ran, on the app's own loop clock
        assert isinstance(body["received_at"], float) and body["received_at"] <= body["now"]
    assert stamps[0]["received_at"] <= stamps[1]["received_at"] <= stamps[2]["received_at"]


@pytest.mark.parametrize("payload", [
    b"",
    b"GET /stamp HTTP/1.1\r\nHost: x\r\n",
], ids=["nothing", "half-headers"])
def test_no_request_in_time_gets_408_and_close(port: int, payload: bytes, processes) -> None:
    (status, body), = _responses(processes.read_until_closed(port, payload))
    assert status.startswith(b"HTTP/1.1 408 ")
    assert body["error"]["type"] == "request_timeout" and body["error"]["param"] is None


def test_a_body_cut_short_is_closed_without_an_answer(port: int, processes) -> None:
    half = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf"
    assert processes.read_until_closed(port, half) == b""


def test_the_timer_runs_per_request_not_while_a_keep_alive_connection_idles(port: int) -> None:
    """Idle time between requests is the keep-alive timeout's business: a request that starts after more
    than the read timeout of silence is served, and a second one that stalls gets its own 408."""
    get = b"GET /stamp HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        for _ in range(2):
            sock.sendall(get)
            assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(READ_TIMEOUT_S * 2)
        sock.sendall(get[:10])  # a third request begins and stalls
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("payload", [
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"GET /stamp HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET /stamp HTTP/9.9 extra\r\n\r\n",
], ids=["content-length", "two-content-lengths", "header", "request-line"])
def test_a_request_the_parser_cannot_read_gets_the_api_error_body(port: int, payload: bytes, processes) -> None:
    data = processes.read_until_closed(port, payload)
    head = data.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 400 ") and b"content-type: application/json" in head
    assert b"connection: close" in head
    (_, body), = _responses(data)
    assert body["error"]["type"] == "invalid_request_error" and "malformed HTTP request" in body["error"]["message"]
