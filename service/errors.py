"""The one place where exceptions become HTTP errors: `{"error": {"type", "message", "param"}}`."""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.dataset import DatasetExists, DatasetNotFound
from models.device import DeviceError
from models.errors import CheckpointError, InputError
from models.versions import PromotionRefused, VersionError, VersionNotFound
from service.jobs import IdempotencyKeyReused, JobConflict, JobNotFound, JobStoreUnavailable

log = logging.getLogger(__name__)

_HTTP_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found", 405: "method_not_allowed", 409: "conflict", 413: "request_too_large",
               415: "unsupported_media_type", 429: "rate_limit_exceeded", 503: "unavailable"}


class ServiceError(Exception):
    """An error of the service with a message for the client and the request field at fault."""

    headers: dict[str, str] | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class BadRequestError(ServiceError):
    """The request is well-formed but cannot be served as asked (a job's data path, jobs disabled)."""


class AuthenticationError(ServiceError):
    """No usable API key on a route that needs one."""

    headers = {"WWW-Authenticate": "Bearer"}


class PermissionDeniedError(ServiceError):
    """An API key was given, but not the right one."""


class ConflictError(ServiceError):
    """The request clashes with what exists (a model name taken, an alias)."""


class ModelNotFoundError(ServiceError):
    """No loaded model (or alias) has this name."""

    def __init__(self, name: str, param: str = "model", message: str | None = None) -> None:
        super().__init__(message or f"model {name!r} is not loaded; GET /v1/models lists the available ones", param)
        self.name = name


class QueueFullError(ServiceError):
    """The micro-batcher's queue for a model is full: the client should retry shortly."""

    def __init__(self, model: str, depth: int, retry_after_s: int = 1) -> None:
        super().__init__(f"model {model!r} is overloaded ({depth} requests waiting); retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s
        self.headers = {"Retry-After": str(retry_after_s)}


# Every domain exception and its HTTP status and error type, in one table. The message is the
# exception's own, and `param` its `param` attribute, unless `_DESCRIBE` says otherwise.
DOMAIN_ERRORS: dict[type[Exception], tuple[int, str]] = {
    BadRequestError: (400, "invalid_request_error"),
    AuthenticationError: (401, "authentication_error"),
    PermissionDeniedError: (403, "permission_error"),
    ModelNotFoundError: (404, "model_not_found"),
    JobNotFound: (404, "job_not_found"),
    ConflictError: (409, "conflict"),
    JobConflict: (409, "conflict"),
    DatasetNotFound: (404, "dataset_not_found"),
    DatasetExists: (409, "conflict"),
    VersionNotFound: (404, "version_not_found"),
    PromotionRefused: (409, "promotion_refused"),
    VersionError: (409, "conflict"),
    InputError: (422, "invalid_request_error"),
    IdempotencyKeyReused: (422, "idempotency_key_reused"),
    QueueFullError: (503, "overloaded"),
    CheckpointError: (503, "model_unavailable"),
    DeviceError: (503, "device_unavailable"),
    JobStoreUnavailable: (503, "job_store_unavailable"),
}
_DESCRIBE: dict[type[Exception], Callable[[Exception], tuple[str, str | None]]] = {
    JobNotFound: lambda exc: (f"no job with id {exc.args[0]!r}" if exc.args else "no such job", "id"),
    DatasetNotFound: lambda exc: (str(exc), getattr(exc, "param", "name")),
    DatasetExists: lambda exc: (str(exc), "name"),
}


def error_body(type_: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "param": param}}


def error_response(status: int, type_: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(type_, message, param), status_code=status, headers=headers)


def domain_error(exc: Exception) -> tuple[int, str, str, str | None, dict[str, str] | None]:
    """(status, type, message, param, headers) of a domain exception (its nearest class in DOMAIN_ERRORS)."""
    cls = next(c for c in type(exc).__mro__ if c in DOMAIN_ERRORS)
    status, type_ = DOMAIN_ERRORS[cls]
    describe = _DESCRIBE.get(cls)
    message, param = describe(exc) if describe else (str(exc), getattr(exc, "param", None))
    return status, type_, message, param, getattr(exc, "headers", None)


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


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status, type_, message, param, headers = domain_error(exc)
    if isinstance(exc, CheckpointError):
        log.error("%s while serving %s: %s", type(exc).__name__, request.url.path, exc)
    return error_response(status, type_, message, param, headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Errors raised by the framework itself (unknown path, wrong method, body too large)."""
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error" if exc.status_code < 500 else "server_error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        allowed = allowed_methods(request)
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
        return error_response(405, type_, message, None, {**(exc.headers or {}), "Allow": ", ".join(allowed)})
    return error_response(exc.status_code, type_, message, None, exc.headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette's 405 names only the first route's)."""
    routes = request.app.router.routes
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)]


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "server_error", "internal server error")


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with a 413 in the usual error shape.

    The limit is checked as the route reads the body, so the HTTPException goes through the
    handlers below (Starlette's own limiter answers in plain text).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.path_limits = path_limits or {}  # path prefix -> its own limit (dataset uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = next((limit for prefix, limit in self.path_limits.items() if scope["path"].startswith(prefix)),
                         self.default_max_bytes)
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), b"")
        received = int(declared) if declared.isdigit() else 0

        async def limited_receive() -> Message:
            nonlocal received
            if received > max_bytes:
                raise StarletteHTTPException(413, f"request body is over the limit of {max_bytes:,} bytes")
            message = await receive()
            if message["type"] == "http.request" and not declared:
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise StarletteHTTPException(413, f"request body is over the limit of {max_bytes:,} bytes")
            return message

        await self.app(scope, limited_receive, send)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # `\ud800` .. `\udfff` escapes in JSON
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(value: Any) -> Any:
    """`value` (parsed JSON) with every lone surrogate, in strings and keys, replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {without_lone_surrogates(k): without_lone_surrogates(v) for k, v in value.items()}
    return value


def clean_json_body(body: bytes) -> bytes:
    """A JSON body whose strings hold lone surrogates (a `\\ud800` escape: no UTF-8 text can carry one,
    so the answer echoing it could not be encoded) re-encoded with U+FFFD in their place; any other
    body unchanged (invalid JSON is left for the route to refuse)."""
    if not _SURROGATE_ESCAPE.search(body):
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    cleaned = without_lone_surrogates(data)
    return body if cleaned == data else json.dumps(cleaned, ensure_ascii=False).encode()


STREAMED_PREFIXES = ("/v1/datasets",)  # uploads of raw text, read as a stream: no JSON to clean


class SurrogateMiddleware:
    """Every text field of every route takes lone surrogates, as U+FFFD (see `clean_json_body`).

    The body is read when the route asks for it, so errors raised while reading (a body over the
    limit) still reach the handlers below.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE")
                or scope["path"].startswith(STREAMED_PREFIXES)):
            await self.app(scope, receive, send)
            return
        read = False

        async def cleaned_receive() -> Message:
            nonlocal read
            if read:
                return await receive()
            chunks = []
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message  # the client went away
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            read = True
            return {"type": "http.request", "body": clean_json_body(b"".join(chunks)), "more_body": False}

        await self.app(scope, cleaned_receive, send)


def document_errors(app: FastAPI) -> None:
    """Make the OpenAPI document say what the handlers above do: every operation that takes a JSON body
    answers 400 with the error shape when the body is not JSON (unless it documents 4XX already), and
    only the routes that this server's settings protect with the API key say they need it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        error_ref = {"$ref": "#/components/schemas/ErrorResponse"}  # the native routes' 4xx use it already
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if "requestBody" in operation and "400" not in responses and "4XX" not in responses:
                    responses["400"] = {"description": "the body is not valid JSON",
                                        "content": {"application/json": {"schema": error_ref}}}
                if "security" in operation and not _needs_key(app.state.settings, operation.get("tags", ())):
                    del operation["security"]
                if "security" in operation and "4XX" not in responses:
                    for status, meaning in (("401", "no API key"), ("403", "a wrong API key")):
                        responses.setdefault(status, {"description": meaning,
                                                      "content": {"application/json": {"schema": error_ref}}})
                if INFERENCE_TAGS.intersection(operation.get("tags", ())):  # admission control's refusal
                    responses.setdefault("503", {"description": "overloaded: retry after `Retry-After` seconds",
                                                 "content": {"application/json": {"schema": error_ref}}})
                for response in responses.values():
                    stream = response.get("content", {}).get("text/event-stream")
                    if stream and "schema" in stream:
                        chunk = (stream["schema"].get("examples") or [None])[0]
                        stream["schema"] = _sse_event(stream["schema"], schema)
                        if chunk is not None and "example" not in stream:  # one event, then the last one
                            stream["example"] = {"data": json.dumps(chunk)}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _sse_event(data: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """The schema of one server-sent event whose `data` is a JSON document of schema `data` (its `$defs`
    moved into the document's components, where the rest of the document can reach them)."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in data.pop("$defs", {}).items():
        components.setdefault(name, definition)
    data = json.loads(json.dumps(data).replace('"#/$defs/', '"#/components/schemas/'))
    json_data = {"type": "string", "contentMediaType": "application/json", "contentSchema": data}
    return {"type": "object", "required": ["data"],
            "description": "one server-sent event: `data` is a JSON chunk, and `[DONE]` in the stream's last one",
            "properties": {"event": {"type": "string"}, "id": {"type": "string"},
                           "data": {"anyOf": [json_data, {"const": "[DONE]"}]}}}


INFERENCE_TAGS = frozenset({"scoring", "generation", "openai"})  # the routers that need the key only on request


def _needs_key(settings: Any, tags: Sequence[str]) -> bool:
    """Whether an operation with these tags asks for the API key under these settings."""
    if settings.api_key is None:
        return False
    return settings.api_key_inference or not INFERENCE_TAGS.intersection(tags)


def install(app: FastAPI) -> None:
    """Register every handler on `app`."""
    document_errors(app)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for exc_class in DOMAIN_ERRORS:
        app.add_exception_handler(exc_class, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
