"""The uvicorn server of `rnnlm serve`: one process, its HTTP protocol with a request-read timeout.

Layers against overload, outermost first: the kernel's listen backlog (uvicorn's `backlog`, 2048)
holds connections not yet accepted; uvicorn's `limit_concurrency` is left off, because it counts
connections, so keep-alive clients that are merely connected would make it refuse everyone; the
read timeout below closes connections that do not deliver a whole request in time; admission
control (service/admission.py) bounds the inference requests running at once and answers the rest
503 at once; the micro-batcher's per-model queue (`max_queue`) is the last backstop.

The protocol is uvicorn's httptools one (llhttp, in C) on uvloop's event loop when uvloop is installed:
a small request's round trip costs a fraction of what the pure-Python h11 protocol on asyncio's loop
spends (README, Performance). `RNNLM_HTTP=h11` keeps the h11 protocol, with the same behaviour, for a
platform without httptools.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.admission import RECEIVED_AT
from service.request_id import log_config
from service.settings import Settings

log = logging.getLogger(__name__)

STARTUP_FAILURE = 3  # uvicorn's exit status when the server could not start
_REQUEST_READ = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)  # h11 client states past the request
_MALFORMED = json.dumps({"error": {"type": "invalid_request_error", "param": None,
                                   "message": "malformed HTTP request (a bad Content-Length, header or request line)"}}
                        ).encode()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (for tests, benches and scripts that start
    a server; another process may still take it before the server binds)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _ReadTimer:
    """The bound on reading each request, shared by both protocols (mixed in before uvicorn's protocol class,
    so its connection_made / connection_lost wrap the protocol's own).

    uvicorn times out idle keep-alive connections but not a request that is half sent: a client can
    hold a connection forever by never finishing its headers or body. Here a timer runs from the
    moment a connection opens, or a new request begins on it, until the request's body is complete;
    when it fires the connection is closed (with a 408 if no request had been parsed yet). The
    timer is not re-armed by each byte, so trickling a byte at a time does not extend it.
    """

    read_timeout_s = 10.0
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None
    _read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _nothing_parsed(self) -> bool:
        """No request's headers parsed and no response under way: a 408 can be written."""
        raise NotImplementedError

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self._nothing_parsed():
            body = (b'{"error": {"type": "request_timeout", "message": "no complete request within %g s", '
                    b'"param": null}}' % self.read_timeout_s)
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        log.info("closing connection from %s: request not read within %g s",
                 f"{self.client[0]}:{self.client[1]}" if self.client else "?", self.read_timeout_s)
        # The app, if it was waiting for the body, gets http.disconnect.
        self.transport.close()


class ReadTimeoutProtocol(_ReadTimer, HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the read timeout, the scope's RECEIVED_AT stamp (the loop time
    the request's headers were parsed, for admission control's queue-time check) and the API's error
    body for a request the parser cannot read."""

    _headers_parsed = False

    def on_message_begin(self) -> None:
        """The parser saw a new request's first byte."""
        self._headers_parsed = False
        self._arm()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._headers_parsed = True
        self.scope.setdefault("extensions", {})[RECEIVED_AT] = self.loop.time()  # type: ignore[typeddict-unknown-key]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _nothing_parsed(self) -> bool:
        return not self._headers_parsed and (self.cycle is None or self.cycle.response_complete)

    def send_400_response(self, msg: str) -> None:
        """A request llhttp cannot parse (a bad Content-Length, a malformed header) gets the API's error body."""
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(_MALFORMED), _MALFORMED))
        self.transport.close()


class H11ReadTimeoutProtocol(_ReadTimer, H11Protocol):
    """The same on uvicorn's pure-Python h11 protocol (RNNLM_HTTP=h11)."""

    def handle_events(self) -> None:
        """Parse what has arrived (from data_received, or buffered behind a finished response)."""
        parsed_at, scope = self.loop.time(), self.scope
        super().handle_events()
        if self.scope is not scope and self.scope is not None:
            self.scope.setdefault("extensions", {})[RECEIVED_AT] = parsed_at  # type: ignore[typeddict-unknown-key]
        if self.transport.is_closing() or self.conn.their_state in _REQUEST_READ:
            self._disarm()
        elif self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]:
            self._arm()  # a request has begun and is not complete

    def _nothing_parsed(self) -> bool:
        return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (a bad Content-Length, a malformed header) gets the API's error body."""
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", b"%d" % len(_MALFORMED))]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=_MALFORMED),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def protocol_class(read_timeout_s: float, http: str = "httptools") -> type[asyncio.Protocol]:
    """The read-timeout protocol on `http` (httptools or h11) with this server's timeout (uvicorn
    instantiates the class per connection)."""
    base = {"httptools": ReadTimeoutProtocol, "h11": H11ReadTimeoutProtocol}[http]
    return type(base.__name__, (base,), {"read_timeout_s": read_timeout_s})


def build_server(app: FastAPI, settings: Settings, log_level: str = "info") -> uvicorn.Server:
    """One server process: the models live in this process' memory; scale out with replicas."""
    config = uvicorn.Config(app, host=settings.host, port=settings.port, workers=1, log_level=log_level,
                            http=protocol_class(settings.request_read_timeout_s, settings.http), loop=settings.loop,
                            log_config=log_config(log_level))
    return uvicorn.Server(config)


def serve(app: FastAPI, settings: Settings, log_level: str = "info") -> int:
    """Run until SIGINT/SIGTERM; the exit status of a server that could not start is uvicorn's (3)."""
    server = build_server(app, settings, log_level)
    server.run()
    return 0 if server.started else STARTUP_FAILURE
