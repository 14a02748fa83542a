"""Typed results: the API's JSON responses as small pydantic models (fields a newer server adds are kept too)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Health(Result):
    status: str


class Ready(Result):
    status: str                 # "ready" | "not_ready"
    models: list[str]

    @property
    def ready(self) -> bool:
        return self.status == "ready"


class ModelCard(Result):
    name: str
    aliases: list[str] = []
    arch: str
    parameters: int
    vocab_size: int
    context: bool
    emb: int | None = None
    hidden: int | None = None
    layers: int | None = None
    adaptive_softmax: bool | None = None
    dtype: str | None = None
    tokenizer: str | None = None
    metrics: dict[str, Any] = {}
    provenance: dict[str, Any] = {}


class Response(Result):
    model: str
    context_used: bool = False
    warnings: list[str] = []


class TokenScore(Result):
    token: str
    logprob: float              # natural log
    oov: bool


class TextScore(Result):
    text: str
    logprob: float              # natural log, summed over the tokens
    num_tokens: int
    perplexity: float
    oov_count: int
    tokens: list[TokenScore] | None = None


class ScoreResponse(Response):
    results: list[TextScore]


class PerplexityResult(Result):
    text: str
    perplexity: float
    num_tokens: int
    logprob: float
    oov_count: int


class PerplexityResponse(Response):
    perplexity: float
    num_tokens: int
    nll: float
    results: list[PerplexityResult]


class RankResult(Result):
    rank: int                   # 1 = most probable
    text: str
    logprob: float
    num_tokens: int
    perplexity: float
    oov_count: int


class RankResponse(Response):
    results: list[RankResult]


class Prediction(Result):
    word: str
    prob: float


class NextWordResponse(Response):
    predictions: list[Prediction]
    completing: str | None = None


class Choice(Result):
    index: int
    text: str
    tokens: list[str]
    logprob: float
    finish_reason: str          # "length" | "stop" | "eos"


class GenerateResponse(Response):
    choices: list[Choice]


class StreamChunk(Result):
    """One server-sent event of a streamed generation; `finish_reason` is set on a choice's last one."""
    index: int
    token: str | None
    text: str
    logprob: float | None
    finish_reason: str | None = None


class JobCreated(Result):
    id: str
    status: str


class JobProgress(Result):
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    loss: float | None = None
    valid_ppl: float | None = None
    best_valid_ppl: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    lr: float | None = None
    resumed_from_epoch: int | None = None
    attempt: int | None = None


FINISHED = ("succeeded", "failed", "cancelled")


class Job(Result):
    id: str
    type: str
    name: str
    status: str                 # queued | running | succeeded | failed | cancelled
    cancel_requested: bool = False
    params: dict[str, Any] = {}
    progress: JobProgress | None = None
    model: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    worker_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED
