"""Dependencies shared by the routers: settings, registry, batcher, job store, model lookup, limits,
API key, off-loop calls."""
from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from models.engine import Engine
from models.errors import InputError
from service.batcher import Batcher
from service.jobs import JobStore
from service.registry import ModelRegistry
from service.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


# `async` although they never await: FastAPI runs a plain `def` dependency in the thread pool, a thread
# hop per dependency per request (bench/load.py); these only read app.state.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_batcher(request: Request) -> Batcher:
    return request.app.state.batcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]


def use_model(request: Request, registry: ModelRegistry, name: str | None) -> Engine:
    """Resolve `name` (or the default alias) and label this request's metrics with the model."""
    engine = registry.get(name)
    request.state.model = engine.name
    return engine


async def run_engine(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking torch work in the thread pool so the event loop (and /health) stays responsive."""
    return await run_in_threadpool(func, *args, **kwargs)


def context_notes(engine: Engine, context: str | None) -> tuple[bool, list[str]]:
    """(context_used, warnings) for a request that may carry a context."""
    if context is not None and not engine.supports_context:
        return False, [f"context ignored: model {engine.name} was not trained with a context"]
    return engine.context_used(context), []


def _too_long(value: str | None, limit: int, param: str) -> None:
    if value is not None and len(value) > limit:
        raise InputError(f"{param}: {len(value):,} characters, the limit is {limit:,}", param)


def check_limits(body: object, settings: Settings) -> None:
    """Enforce the configurable limits on any request body (raises InputError -> 422)."""
    for name in ("texts", "candidates"):
        items = getattr(body, name, None)
        if items is None:
            continue
        if len(items) > settings.max_texts:
            raise InputError(f"{name}: {len(items)} items, the limit is {settings.max_texts}", name)
        for i, text in enumerate(items):
            _too_long(text, settings.max_text_chars, f"{name}.{i}")
    for name in ("text", "prompt", "context"):
        _too_long(getattr(body, name, None), settings.max_text_chars, name)
    for i, stop in enumerate(getattr(body, "stop", None) or ()):
        _too_long(stop, settings.max_text_chars, f"stop.{i}")
    for name, limit in (("k", settings.max_k), ("max_tokens", settings.max_tokens), ("n", settings.max_n)):
        value = getattr(body, name, None)
        if value is not None and value > limit:
            raise InputError(f"{name} must be at most {limit}, got {value}", name)


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """With an API key configured, demand `Authorization: Bearer <key>` (jobs and admin routes):
    401 when it is missing, 403 when it is wrong."""
    if settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, {"type": "authentication_error",
                                  "message": "this route needs an API key (Authorization: Bearer <key>)",
                                  "param": None}, headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(token.strip().encode(), settings.api_key.get_secret_value().encode()):
        raise HTTPException(403, {"type": "permission_error", "message": "wrong API key", "param": None})


ApiKeyDep = Depends(require_api_key)


async def get_job_store(request: Request) -> JobStore:
    return request.app.state.jobs


JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
