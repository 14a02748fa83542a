"""Scoring, perplexity and ranking through the micro-batcher."""
from __future__ import annotations

from models.engine import ScoredText
from service import metrics
from service.batcher import Batcher
from service.registry import ModelRegistry
from service.schemas import (PerplexityRequest, PerplexityResponse, PerplexityResult, RankRequest, RankResponse,
                             RankResult, ScoreRequest, ScoreResponse, TextScore, TokenScore)
from service.serving.common import check_limits, context_fields, use_model
from service.settings import Settings


def _text_score(s: ScoredText, details: bool) -> TextScore:
    tokens = [TokenScore(token=t.token, logprob=t.logprob, oov=t.oov) for t in s.tokens] if details else None
    return TextScore(text=s.text, logprob=s.logprob, num_tokens=s.num_tokens, perplexity=s.perplexity,
                     oov_count=s.oov_count, tokens=tokens)


class ScoringService:
    """`/v1/score`, `/v1/perplexity` and `/v1/rank`: concurrent requests are merged by the batcher."""

    def __init__(self, registry: ModelRegistry, batcher: Batcher, settings: Settings) -> None:
        self.registry = registry
        self.batcher = batcher
        self.settings = settings

    async def score(self, body: ScoreRequest) -> ScoreResponse:
        check_limits(body, self.settings)
        engine = use_model(self.registry, body.model)
        context = engine.resolve_context(body.context)
        scores = await self.batcher.score(engine, body.texts, add_eos=body.add_eos, context=context)
        metrics.TOKENS_SCORED.labels(engine.name).inc(sum(s.num_tokens for s in scores))
        return ScoreResponse(model=engine.name, results=[_text_score(s, body.details) for s in scores],
                             **context_fields(context))

    async def perplexity(self, body: PerplexityRequest) -> PerplexityResponse:
        check_limits(body, self.settings)
        engine = use_model(self.registry, body.model)
        context = engine.resolve_context(body.context)
        corpus = await self.batcher.perplexity(engine, body.texts, context=context)
        metrics.TOKENS_SCORED.labels(engine.name).inc(corpus.num_tokens)
        results = [PerplexityResult(text=s.text, perplexity=s.perplexity, num_tokens=s.num_tokens,
                                    logprob=s.logprob, oov_count=s.oov_count) for s in corpus.results]
        return PerplexityResponse(model=engine.name, perplexity=corpus.perplexity, num_tokens=corpus.num_tokens,
                                  nll=corpus.nll, results=results, **context_fields(context))

    async def rank(self, body: RankRequest) -> RankResponse:
        check_limits(body, self.settings)
        engine = use_model(self.registry, body.model)
        context = engine.resolve_context(body.context)
        ranked = await self.batcher.rank(engine, body.candidates, context=context)
        metrics.TOKENS_SCORED.labels(engine.name).inc(sum(s.num_tokens for s in ranked))
        results = [RankResult(rank=i, text=s.text, logprob=s.logprob, num_tokens=s.num_tokens,
                              perplexity=s.perplexity, oov_count=s.oov_count) for i, s in enumerate(ranked, start=1)]
        return RankResponse(model=engine.name, results=results, **context_fields(context))
