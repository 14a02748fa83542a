"""Exceptions of the client: one class per HTTP error status, carrying the server's `{"error": {...}}` body."""
from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base class of everything this client raises on purpose."""


class APIError(ClientError):
    """The server answered with an error: `status`, and the body's `type`, `message` and `param`."""

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None,
                 param: str | None = None, body: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {type}: {message}" if status else f"{type}: {message}")
        self.status = status
        self.type = type
        self.message = message
        self.param = param
        self.body = body
        self.headers = headers or {}


class BadRequestError(APIError):
    """400 or 422: malformed JSON, a missing or out-of-range field, an empty or too long text."""


class AuthenticationError(APIError):
    """401: the route needs an API key (`Authorization: Bearer <key>`)."""


class PermissionDeniedError(APIError):
    """403: the API key is wrong."""


class NotFoundError(APIError):
    """404: no such model, job or endpoint."""


class ConflictError(APIError):
    """409: the model name is taken, or the job has already finished."""


class RequestTooLargeError(APIError):
    """413: the request body is over the server's limit."""


class RateLimitError(APIError):
    """429: too many requests."""


class OverloadedError(APIError):
    """503: the server is busy (its queue is full) or has no model ready; retried with `Retry-After`."""


class InternalServerError(APIError):
    """500 and other 5xx statuses."""


class StreamError(APIError):
    """An error the server reported inside a stream of server-sent events, after its 200 header."""


class APIConnectionError(ClientError):
    """The server could not be reached, or the connection broke before an answer came."""


class APITimeoutError(APIConnectionError):
    """No answer within the timeout."""


class JobError(ClientError):
    """A followed job ended without succeeding; `job` is its last state."""

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message)
        self.job = job


class JobFailedError(JobError):
    """The job failed; `job.error` says why."""


class JobCancelledError(JobError):
    """The job was cancelled."""


_BY_STATUS: dict[int, type[APIError]] = {400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError,
                                         404: NotFoundError, 409: ConflictError, 413: RequestTooLargeError,
                                         422: BadRequestError, 429: RateLimitError, 503: OverloadedError}


def error_for(status: int, body: Any, text: str, headers: dict[str, str] | None = None) -> APIError:
    """The exception for an error response: its class from the status, its fields from the error body."""
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIError)
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        return cls(str(detail.get("message", "")), status=status, type=detail.get("type"),
                   param=detail.get("param"), body=body, headers=headers)
    return cls(text.strip()[:500] or f"HTTP {status}", status=status, type=None, body=body, headers=headers)
