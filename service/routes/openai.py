"""OpenAI-compatible routes: `/v1/completions` (and a clear refusal of `/v1/chat/completions`).

Errors here use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`, and a request the
model cannot serve is a 400 (OpenAI's status for it; the native routes answer 422), so OpenAI's
clients raise their typed exceptions.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sse_starlette import EventSourceResponse

from service.deps import CompletionDep
from service.errors import BadRequestError
from service.openai_protocol import (
    CompletionRequest,
    CompletionResponse,
    OpenAIErrorResponse,
    error_detail,
    unsupported_chat_message,
)


class OpenAIRoute(APIRoute):
    """A route whose errors (validation, domain, framework) are answered in OpenAI's error body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                handle = next((request.app.exception_handlers[c] for c in type(exc).__mro__
                               if c in request.app.exception_handlers), None)
                if handle is None:
                    raise
                native = await handle(request, exc)
                status = 400 if native.status_code == 422 else native.status_code
                headers = {k: v for k, v in native.headers.items()
                           if k.lower() not in ("content-length", "content-type")}
                return JSONResponse(error_detail(json.loads(native.body), status), status_code=status, headers=headers)

        return route


# "4XX" rather than a list of codes: it also keeps FastAPI from documenting a 422, which these routes never send
ERRORS = {"4XX": {"model": OpenAIErrorResponse, "description": "a bad request (400), an unknown model (404), ..."},
          503: {"model": OpenAIErrorResponse, "description": "overloaded: retry after `Retry-After` seconds"}}
router = APIRouter(prefix="/v1", tags=["openai"], responses=ERRORS, route_class=OpenAIRoute)

STREAM_DOC = {200: {"description": "JSON, or with `stream: true` server-sent events: `data:` chunks of the same "
                                   "shape whose `text` is the new text, then `data: [DONE]`",
                    "content": {"text/event-stream": {"schema": CompletionResponse.model_json_schema()}}}}


@router.post("/completions", response_model=CompletionResponse, responses=STREAM_DOC)
async def completions(body: CompletionRequest, service: CompletionDep):
    """OpenAI's completions: continue or score (`max_tokens: 0`, `echo`, `logprobs`) one or more prompts."""
    if not body.stream:  # already a CompletionResponse: serialised once, by pydantic, not dumped and re-validated
        return Response((await service.complete(body)).model_dump_json(), media_type="application/json")
    context, chunks = await service.stream(body)
    return EventSourceResponse(chunks, headers={"X-Context-Used": str(context.used).lower()})


@router.post("/chat/completions", status_code=400, response_model=OpenAIErrorResponse)
async def chat_completions() -> None:
    """Not served: the models are plain language models without a chat template."""
    raise BadRequestError(unsupported_chat_message(), "messages")
