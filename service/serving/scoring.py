"""Scoring, perplexity and ranking through the micro-batcher."""
from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from models.engine import ScoredText, corpus_score, rank_scores
from service import metrics
from service.batcher import Batcher
from service.registry import ModelRegistry
from service.schemas import (
    PerplexityRequest,
    PerplexityResponse,
    PerplexityResult,
    RankRequest,
    RankResponse,
    RankResult,
    ScoreRequest,
    ScoreResponse,
    TextScore,
    TokenScore,
)
from service.serving.common import check_limits, context_fields, use_model
from service.settings import Settings


def _text_score(s: ScoredText, details: bool) -> TextScore:
    """The engine's numbers are already of the schema's types: built without validating them again."""
    tokens = [TokenScore.model_construct(token=t.token, logprob=t.logprob, oov=t.oov) for t in s.tokens] \
        if details else None
    return TextScore.model_construct(text=s.text, logprob=s.logprob, num_tokens=s.num_tokens,
                                     perplexity=s.perplexity, oov_count=s.oov_count, tokens=tokens)


def _scoring_fields(scores: list[ScoredText], cache: bool = False) -> dict:
    """The `oov_convention` and `cache` fields of a response: what its scores actually used."""
    return {"oov_convention": scores[0].oov_convention if scores else "unk-word", "cache": cache}


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
        if body.cache:  # one document: its texts are not merged with other requests'
            scores = await run_in_threadpool(engine.score, body.texts, add_eos=body.add_eos, context=context,
                                             cache=True, oov_convention=body.oov_convention, details=body.details)
        else:
            scores = engine.with_oov_convention(
                await self.batcher.score(engine, body.texts, add_eos=body.add_eos, context=context,
                                         details=body.details),
                body.oov_convention)
        metrics.TOKENS_SCORED.labels(engine.name).inc(sum(s.num_tokens for s in scores))
        return ScoreResponse(model=engine.name, results=[_text_score(s, body.details) for s in scores],
                             **context_fields(context), **_scoring_fields(scores, body.cache))

    async def perplexity(self, body: PerplexityRequest) -> PerplexityResponse:
        check_limits(body, self.settings)
        engine = use_model(self.registry, body.model)
        context = engine.resolve_context(body.context)
        if body.cache:
            corpus = await run_in_threadpool(engine.perplexity, body.texts, context=context, cache=True,
                                             oov_convention=body.oov_convention)
        else:
            corpus = await self.batcher.perplexity(engine, body.texts, context=context)
            corpus = corpus_score(engine.with_oov_convention(corpus.results, body.oov_convention))
        metrics.TOKENS_SCORED.labels(engine.name).inc(corpus.num_tokens)
        results = [PerplexityResult.model_construct(text=s.text, perplexity=s.perplexity, num_tokens=s.num_tokens,
                                                    logprob=s.logprob, oov_count=s.oov_count) for s in corpus.results]
        return PerplexityResponse(model=engine.name, perplexity=corpus.perplexity, num_tokens=corpus.num_tokens,
                                  nll=corpus.nll, results=results, **context_fields(context),
                                  **_scoring_fields(corpus.results, body.cache))

    async def rank(self, body: RankRequest) -> RankResponse:
        check_limits(body, self.settings)
        engine = use_model(self.registry, body.model)
        context = engine.resolve_context(body.context)
        ranked = await self.batcher.rank(engine, body.candidates, context=context)
        ranked = rank_scores(engine.with_oov_convention(ranked, body.oov_convention))
        metrics.TOKENS_SCORED.labels(engine.name).inc(sum(s.num_tokens for s in ranked))
        results = [RankResult.model_construct(rank=i, text=s.text, logprob=s.logprob, num_tokens=s.num_tokens,
                                              perplexity=s.perplexity, oov_count=s.oov_count)
                   for i, s in enumerate(ranked, start=1)]
        return RankResponse(model=engine.name, results=results, **context_fields(context),
                            **_scoring_fields(ranked))
