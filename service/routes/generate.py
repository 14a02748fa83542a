"""Next-word prediction (predictive typing) and text generation, streamed or not."""
from __future__ import annotations

from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from service.deps import GenerationDep, NextWordDep
from service.schemas import (
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    NextWordRequest,
    NextWordResponse,
    StreamChunk,
)

ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}
router = APIRouter(prefix="/v1", tags=["generation"], responses=ERRORS)


@router.post("/next-word", response_model=NextWordResponse)
async def next_word(body: NextWordRequest, service: NextWordDep) -> NextWordResponse:
    """The k most probable next words; completes the last word when `text` ends inside one."""
    return await service.next_word(body)


STREAM_DOC = {200: {"description": "JSON, or with `stream: true` server-sent events: one `data:` chunk per "
                                   "token, a final chunk per choice with `finish_reason`, then `data: [DONE]`",
                    "content": {"text/event-stream": {"schema": StreamChunk.model_json_schema()}}}}


@router.post("/generate", response_model=GenerateResponse, responses=STREAM_DOC)
async def generate(body: GenerateRequest, service: GenerationDep):
    """Sample continuations of `prompt` (optionally conditioned on `context`)."""
    if not body.stream:
        return await service.generate(body)
    stream = await service.stream(body)
    headers = {"X-Context-Used": str(stream.context.used).lower()}
    if stream.context.warnings:
        headers["X-Warnings"] = "; ".join(stream.context.warnings)
    return EventSourceResponse(stream.chunks, headers=headers)
