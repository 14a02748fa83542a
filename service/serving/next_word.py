"""Next-word prediction (predictive typing)."""
from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from models.engine import Engine, NextWord, ResolvedContext
from service.registry import ModelRegistry
from service.schemas import NextWordRequest, NextWordResponse, Prediction
from service.serving.common import check_limits, context_fields, use_model
from service.settings import Settings


class NextWordService:
    """`/v1/next-word`: runs in the thread pool, resuming from the engine's state cache."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    async def next_word(self, body: NextWordRequest) -> NextWordResponse:
        check_limits(body, self.settings)
        engine = use_model(self.registry, body.model)
        context, result = await run_in_threadpool(_predict, engine, body)
        return NextWordResponse(model=engine.name, predictions=[Prediction(word=p.word, prob=p.prob)
                                                                for p in result.predictions],
                                completing=result.prefix, cache=body.cache, **context_fields(context))


def _predict(engine: Engine, body: NextWordRequest) -> tuple[ResolvedContext, NextWord]:
    """The context (tokenised and embedded: model work, kept off the event loop too) and the prediction."""
    context = engine.resolve_context(body.context)
    return context, engine.next_word(body.text, k=body.k, context=context, cache=body.cache)
