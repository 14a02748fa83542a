"""Text generation, whole or streamed token by token."""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass

from starlette.concurrency import run_in_threadpool

from models.engine import Engine, GenerationParams, ResolvedContext, StreamEvent
from models.errors import RNNLMError
from service import metrics
from service.errors import error_body
from service.registry import ModelRegistry
from service.schemas import Choice, GenerateRequest, GenerateResponse
from service.serving.common import check_limits, context_fields, use_model
from service.settings import Settings

log = logging.getLogger(__name__)
DONE = "[DONE]"


@dataclass
class GenerationStream:
    """A started generation: its model and context, and its chunks (JSON strings, then `[DONE]`)."""
    model: str
    context: ResolvedContext
    chunks: AsyncIterator[str]


def _params(body: GenerateRequest) -> GenerationParams:
    return GenerationParams(max_tokens=body.max_tokens, temperature=body.temperature, top_k=body.top_k,
                            top_p=body.top_p, seed=body.seed, stop=list(body.stop), n=body.n)


class GenerationService:
    """`/v1/generate`: sampling runs in the thread pool; streamed tokens are taken one at a time."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    def _prepare(self, body: GenerateRequest) -> tuple[Engine, ResolvedContext, GenerationParams]:
        check_limits(body, self.settings)
        engine = use_model(self.registry, body.model)
        return engine, engine.resolve_context(body.context), _params(body)

    async def generate(self, body: GenerateRequest) -> GenerateResponse:
        engine, context, params = self._prepare(body)
        result = await run_in_threadpool(engine.generate, body.prompt, params, context=context)
        metrics.TOKENS_GENERATED.labels(engine.name).inc(sum(len(c.tokens) for c in result.choices))
        choices = [Choice(index=c.index, text=c.text, tokens=c.tokens, logprob=c.logprob,
                          finish_reason=c.finish_reason) for c in result.choices]
        return GenerateResponse(model=engine.name, choices=choices, **context_fields(context))

    async def stream(self, body: GenerateRequest) -> GenerationStream:
        """Start streaming; the first event is taken here, so bad input is still a plain 4xx."""
        engine, context, params = self._prepare(body)
        events = engine.stream(body.prompt, params, context=context)
        first = await run_in_threadpool(next, events, None)
        return GenerationStream(engine.name, context, _chunks(engine.name, events, first))


async def _chunks(model: str, events: Iterator[StreamEvent], event: StreamEvent | None) -> AsyncIterator[str]:
    generated = metrics.TOKENS_GENERATED.labels(model)
    try:
        while event is not None:
            if event.token is not None:
                generated.inc()
            chunk = {k: v for k, v in asdict(event).items() if k != "top"}
            yield json.dumps(chunk if event.token is not None else chunk | {"logprob": None})
            event = await run_in_threadpool(next, events, None)
        yield DONE
    except RNNLMError as exc:  # headers are sent: report in-band and end the stream
        log.warning("generation stream failed: %s", exc)
        yield json.dumps(error_body("generation_error", str(exc), getattr(exc, "param", None)))
    finally:
        events.close()
