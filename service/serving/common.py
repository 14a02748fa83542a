"""What every serving class does first: request limits, the model, the request's context."""
from __future__ import annotations

from models.engine import Engine, ResolvedContext
from models.errors import InputError
from service import metrics
from service.registry import ModelRegistry
from service.settings import Settings


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


def use_model(registry: ModelRegistry, name: str | None, param: str = "model") -> Engine:
    """Resolve `name` (or the default alias) and label this request's metrics with the model."""
    engine = registry.get(name, param=param)
    metrics.label_model(engine.name)
    return engine


def context_fields(context: ResolvedContext) -> dict:
    """The `context_used` and `warnings` fields of a response."""
    return {"context_used": context.used, "warnings": list(context.warnings)}
