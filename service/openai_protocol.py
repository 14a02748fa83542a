"""Request and response models of the OpenAI-compatible routes (`/v1/completions`), as OpenAI, vLLM and
llama.cpp define them; the project's own schemas are in `service.schemas`.

Unknown fields are accepted and ignored (OpenAI clients and tools send fields of their own), except the
known sampling fields this service cannot honour: those are refused when set to anything but their
no-op value, since ignoring them would change the result silently.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.schemas import MAX_SEED, MAX_STOP, Context, ModelName

MAX_LOGPROBS = 5  # OpenAI's limit for the completions API
DEFAULT_MAX_TOKENS = 16  # OpenAI's default

# Fields this service does not implement, with the value that leaves the result unchanged.
UNSUPPORTED = {"suffix": (None, ""), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
               "logit_bias": (None, {}), "repetition_penalty": (None, 1, 1.0), "min_tokens": (None, 0),
               "min_p": (None, 0, 0.0), "use_beam_search": (None, False), "ignore_eos": (None, False)}

Prompt = str | list[str] | list[int] | list[list[int]]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="the error's kind, as on the native routes (invalid_request_error, "
                                  "model_not_found, ...)")
    param: str | None = Field(None, description="the offending request field, dotted (`prompt.1`)")
    code: int = Field(description="the HTTP status")


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorDetail

    model_config = ConfigDict(json_schema_extra={"examples": [{"error": {
        "message": "logprobs: Input should be less than or equal to 5", "type": "invalid_request_error",
        "param": "logprobs", "code": 400}}]})


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = Field(False, description="send a last chunk with `usage` before `[DONE]`")


class CompletionRequest(BaseModel):
    """OpenAI's completions request; `context` and `top_k` are this service's additions."""
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True, json_schema_extra={"examples": [
        {"model": "lstm", "prompt": "The album was released in 1999 .", "max_tokens": 0, "echo": True,
         "logprobs": 1},
        {"model": "lstm", "prompt": "The film", "max_tokens": 20, "temperature": 0.8, "seed": 7, "stop": ["."]}]})

    model: ModelName
    prompt: Prompt = Field(description="a text, a list of texts, or token ids (a list, or a list of lists) of the "
                                       "model's vocabulary; every prompt starts at a sentence start (<eos>)")
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=0, description="tokens to generate per choice; 0 = "
                                                                        "score the prompt only (with `echo`)")
    temperature: float | None = Field(1.0, ge=0, le=2, description="0 = greedy")
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="sample from the k most probable tokens; 0 or -1 = all")
    n: int = Field(1, ge=1, description="choices per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="return each token's log-probability "
                                 "and this many most probable alternatives at its position")
    echo: bool = Field(False, description="return the prompt (and its tokens' log-probabilities) before the "
                                          "completion")
    stop: str | list[str] | None = Field(None, validate_default=True,
                                         description=f"up to {MAX_STOP} strings; generation stops before "
                                                     "any of them")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    best_of: int | None = Field(None, ge=1, description="only `best_of` = `n` (or 1) is supported")
    user: str | None = Field(None, description="accepted and ignored")
    context: Context

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Prompt) -> Prompt:
        if isinstance(value, list):
            if not value:
                raise ValueError("must not be an empty list")
            if any(isinstance(p, list) and not p for p in value):
                raise ValueError("a token-id prompt must not be empty")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    def unsupported(self) -> str | None:
        """The first field set to something this server cannot do (None: every field can be honoured)."""
        extra = self.model_extra or {}
        for name, neutral in UNSUPPORTED.items():
            if name in extra and not any(extra[name] == v and type(extra[name]) is type(v) for v in neutral):
                return name
        if self.best_of is not None and self.best_of not in (1, self.n):
            return "best_of"
        return None

    @property
    def prompts(self) -> list[str | list[int]]:
        """The request's prompts, one per list item (a list of ints is one token-id prompt)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="natural log; null for a prompt's first token")
    top_logprobs: list[dict[str, float] | None] = Field(description="the `logprobs` most probable tokens at each "
                                                                    "position, and the token itself")
    text_offset: list[int] = Field(description="where each token starts in the choice's text (characters)")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Usage(BaseModel):
    prompt_tokens: int = Field(description="prompt tokens, the sentence start <eos> included")
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    context_used: bool = Field(False, description="whether `context` conditioned the model")
    warnings: list[str] = Field(default_factory=list)

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "cmpl-3b5c1a2e9d8f4e7a", "object": "text_completion", "created": 1796083200, "model": "lstm",
        "choices": [{"index": 0, "text": "The album was", "finish_reason": "length", "logprobs": {
            "tokens": ["<eos>", "The", "album", "was"], "token_logprobs": [None, -2.6329, -7.0314, -1.9424],
            "top_logprobs": [None, {"<eos>": -1.9958, "The": -2.6329}, {"<unk>": -3.144, "album": -7.0314},
                             {"was": -1.9424}],
            "text_offset": [0, 0, 4, 10]}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4},
        "system_fingerprint": None, "context_used": False, "warnings": []}]})


def unsupported_chat_message() -> str:
    return ("these are not chat models: they have no chat template and are served for plain text; send a "
            "prompt to POST /v1/completions instead")


def error_detail(body: dict[str, Any], status: int) -> dict[str, Any]:
    """The native error body `{"error": {"type", "message", "param"}}` in OpenAI's shape."""
    error = body.get("error", {})
    return {"error": {"message": error.get("message", ""), "type": error.get("type", "error"),
                      "param": error.get("param"), "code": status}}
