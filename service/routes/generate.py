"""Next-word prediction (predictive typing) and text generation, streamed or not."""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from models.engine import Engine, GenerationParams, StreamEvent
from models.errors import RNNLMError
from service import metrics
from service.deps import RegistryDep, SettingsDep, check_limits, context_notes, run_engine, use_model
from service.errors import error_body
from service.schemas import (Choice, ErrorResponse, GenerateRequest, GenerateResponse, NextWordRequest,
                             NextWordResponse, Prediction, StreamChunk)

log = logging.getLogger(__name__)
ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}
router = APIRouter(prefix="/v1", tags=["generation"], responses=ERRORS)
DONE = "[DONE]"


@router.post("/next-word", response_model=NextWordResponse)
async def next_word(body: NextWordRequest, request: Request, registry: RegistryDep,
                    settings: SettingsDep) -> NextWordResponse:
    """The k most probable next words; completes the last word when `text` ends inside one."""
    check_limits(body, settings)
    engine = use_model(request, registry, body.model)
    result = await run_engine(engine.next_word, body.text, k=body.k, context=body.context)
    _, warnings = context_notes(engine, body.context)
    return NextWordResponse(model=engine.name, predictions=[Prediction(word=p.word, prob=p.prob)
                                                            for p in result.predictions],
                            completing=result.prefix, context_used=result.context_used, warnings=warnings)


STREAM_DOC = {200: {"description": "JSON, or with `stream: true` server-sent events: one `data:` chunk per "
                                   "token, a final chunk per choice with `finish_reason`, then `data: [DONE]`",
                    "content": {"text/event-stream": {"schema": StreamChunk.model_json_schema()}}}}


@router.post("/generate", response_model=GenerateResponse, responses=STREAM_DOC)
async def generate(body: GenerateRequest, request: Request, registry: RegistryDep, settings: SettingsDep):
    """Sample continuations of `prompt` (optionally conditioned on `context`)."""
    check_limits(body, settings)
    engine = use_model(request, registry, body.model)
    params = GenerationParams(max_tokens=body.max_tokens, temperature=body.temperature, top_k=body.top_k,
                              top_p=body.top_p, seed=body.seed, stop=list(body.stop), n=body.n)
    used, warnings = context_notes(engine, body.context)
    if body.stream:
        return await _stream(engine, body, params, used, warnings)
    result = await run_engine(engine.generate, body.prompt, params, context=body.context)
    metrics.TOKENS_GENERATED.labels(engine.name).inc(sum(len(c.tokens) for c in result.choices))
    choices = [Choice(index=c.index, text=c.text, tokens=c.tokens, logprob=c.logprob, finish_reason=c.finish_reason)
               for c in result.choices]
    return GenerateResponse(model=engine.name, choices=choices, context_used=result.context_used, warnings=warnings)


async def _stream(engine: Engine, body: GenerateRequest, params: GenerationParams, used: bool,
                  warnings: list[str]) -> EventSourceResponse:
    events = engine.stream(body.prompt, params, context=body.context)
    # Take the first event before answering, so that bad input is still a plain 4xx, not a broken stream.
    first = await run_engine(next, events, None)
    headers = {"X-Context-Used": str(used).lower()}
    if warnings:
        headers["X-Warnings"] = "; ".join(warnings)
    return EventSourceResponse(_sse(engine.name, events, first), headers=headers)


async def _sse(model: str, events: Iterator[StreamEvent], event: StreamEvent | None) -> AsyncIterator[str]:
    generated = metrics.TOKENS_GENERATED.labels(model)
    try:
        while event is not None:
            if event.token is not None:
                generated.inc()
            yield json.dumps(asdict(event))
            event = await run_engine(next, events, None)
        yield DONE
    except RNNLMError as exc:  # headers are sent: report in-band and end the stream
        log.warning("generation stream failed: %s", exc)
        yield json.dumps(error_body("generation_error", str(exc), getattr(exc, "param", None)))
    finally:
        events.close()
