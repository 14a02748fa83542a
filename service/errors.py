"""The one place where exceptions become HTTP errors: `{"error": {"type", "message", "param"}}`."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.errors import CheckpointError, InputError

log = logging.getLogger(__name__)

_HTTP_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found", 405: "method_not_allowed", 409: "conflict", 413: "request_too_large",
               415: "unsupported_media_type", 429: "rate_limit_exceeded", 503: "unavailable"}


class ModelNotFoundError(Exception):
    """No loaded model (or alias) has this name."""

    def __init__(self, name: str, param: str = "model") -> None:
        super().__init__(f"model {name!r} is not loaded; GET /v1/models lists the available ones")
        self.name = name
        self.param = param


class QueueFullError(Exception):
    """The micro-batcher's queue for a model is full: the client should retry shortly."""

    def __init__(self, model: str, depth: int, retry_after_s: int = 1) -> None:
        super().__init__(f"model {model!r} is overloaded ({depth} requests waiting); retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


def error_body(type_: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "param": param}}


def error_response(status: int, type_: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(type_, message, param), status_code=status, headers=headers)


def param_path(loc: Sequence[str | int]) -> str | None:
    """`("body", "texts", 1)` -> `"texts.1"` (the same dotted form the engine uses)."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:] or parts
    return ".".join(parts) or None


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg")
        return error_response(400, "invalid_json", f"request body is not valid JSON: {detail}")
    param = param_path(first.get("loc", ()))
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if param and param != "body":
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return error_response(422, "invalid_request_error", message, param)


async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    return error_response(422, "invalid_request_error", str(exc), exc.param)


async def _model_not_found(request: Request, exc: ModelNotFoundError) -> JSONResponse:
    return error_response(404, "model_not_found", str(exc), exc.param)


async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
    return error_response(503, "overloaded", str(exc), None, headers={"Retry-After": str(exc.retry_after_s)})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if isinstance(detail, dict):  # raised with an explicit {"type", "message", "param"}
        return error_response(exc.status_code, detail.get("type", _HTTP_TYPES.get(exc.status_code, "http_error")),
                              detail.get("message", ""), detail.get("param"), exc.headers)
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error" if exc.status_code < 500 else "server_error")
    message = detail if isinstance(detail, str) else str(detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, type_, message, None, exc.headers)


async def _checkpoint_error(request: Request, exc: CheckpointError) -> JSONResponse:
    log.error("model error while serving %s: %s", request.url.path, exc)
    return error_response(503, "model_unavailable", str(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "server_error", "internal server error")


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with a 413 in the usual error shape.

    The limit is checked as the route reads the body, so the HTTPException goes through the
    handlers below (Starlette's own limiter answers in plain text).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), b"")
        received = int(declared) if declared.isdigit() else 0

        async def limited_receive() -> Message:
            nonlocal received
            if received > self.max_bytes:
                raise StarletteHTTPException(413, f"request body is over the limit of {self.max_bytes:,} bytes")
            message = await receive()
            if message["type"] == "http.request" and not declared:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413, f"request body is over the limit of {self.max_bytes:,} bytes")
            return message

        await self.app(scope, limited_receive, send)


def install(app: FastAPI) -> None:
    """Register every handler on `app`."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(ModelNotFoundError, _model_not_found)
    app.add_exception_handler(QueueFullError, _queue_full)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(CheckpointError, _checkpoint_error)
    app.add_exception_handler(Exception, _unexpected)
