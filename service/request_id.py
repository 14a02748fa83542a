"""Request ids: `X-Request-ID` accepted from the client (or a proxy) or generated, echoed on the response,
and written in every log line of that request (asgi-correlation-id's middleware and logging filter).

`log_config()` is the server's logging setup (uvicorn's `log_config`): the app's loggers and uvicorn's
error and access logs all go through the filter, so each line shows `[<request id>]`, or `[-]` outside
a request.
"""
from __future__ import annotations

import re
from typing import Any

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI

HEADER = "X-Request-ID"
# What a client's id may be: what proxies and tracers send (uuids, hex, base64url, dotted or colon-separated
# trace ids), nothing that could forge a log line. Anything else is replaced by a generated id.
_VALID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
FORMAT = "%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s"
ACCESS_FORMAT = '%(asctime)s %(levelname)s [%(correlation_id)s] %(client_addr)s - "%(request_line)s" %(status_code)s'


def valid_request_id(value: str) -> bool:
    return bool(_VALID.fullmatch(value))


def install(app: FastAPI) -> None:
    """Add the middleware; call it after every other middleware so that it is the outermost."""
    app.add_middleware(CorrelationIdMiddleware, header_name=HEADER, validator=valid_request_id)


def log_config(level: str = "info") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the server process: one stderr handler with the request id."""
    level = level.upper()
    request_id = {"()": "asgi_correlation_id.CorrelationIdFilter", "default_value": "-"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": request_id},
        "formatters": {
            "default": {"format": FORMAT},
            "access": {"()": "uvicorn.logging.AccessFormatter", "fmt": ACCESS_FORMAT, "use_colors": False},
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "filters": ["request_id"],
                        "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "access", "filters": ["request_id"],
                       "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "": {"handlers": ["default"], "level": level},
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
        },
    }
