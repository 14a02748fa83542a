"""Scoring: per-text log-probabilities, corpus perplexity, and ranking of alternatives.

All three go through the micro-batcher, which merges concurrent requests into one engine call.
"""
from __future__ import annotations

from fastapi import APIRouter, Request

from models.engine import corpus_score, rank_scores
from service import metrics
from service.deps import BatcherDep, RegistryDep, SettingsDep, check_limits, context_notes, use_model
from service.schemas import (ErrorResponse, PerplexityRequest, PerplexityResponse, PerplexityResult, RankRequest,
                             RankResponse, RankResult, ScoreRequest, ScoreResponse, TextScore, TokenScore)

ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}
router = APIRouter(prefix="/v1", tags=["scoring"], responses=ERRORS)


@router.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, request: Request, registry: RegistryDep, settings: SettingsDep,
                batcher: BatcherDep) -> ScoreResponse:
    """log p(text) for each text (natural log), with per-token detail on request."""
    check_limits(body, settings)
    engine = use_model(request, registry, body.model)
    scores = await batcher.score(engine, body.texts, add_eos=body.add_eos, context=body.context)
    metrics.TOKENS_SCORED.labels(engine.name).inc(sum(s.num_tokens for s in scores))
    used, warnings = context_notes(engine, body.context)
    results = [TextScore(text=s.text, logprob=s.logprob, num_tokens=s.num_tokens, perplexity=s.perplexity,
                         oov_count=s.oov_count,
                         tokens=[TokenScore(token=t.token, logprob=t.logprob, oov=t.oov) for t in s.tokens]
                         if body.details else None)
               for s in scores]
    return ScoreResponse(model=engine.name, results=results, context_used=used, warnings=warnings)


@router.post("/perplexity", response_model=PerplexityResponse)
async def perplexity(body: PerplexityRequest, request: Request, registry: RegistryDep,
                     settings: SettingsDep, batcher: BatcherDep) -> PerplexityResponse:
    """Perplexity over all tokens of all texts (each text ends with <eos>), plus per text."""
    check_limits(body, settings)
    engine = use_model(request, registry, body.model)
    corpus = corpus_score(await batcher.score(engine, body.texts, add_eos=True, context=body.context))
    metrics.TOKENS_SCORED.labels(engine.name).inc(corpus.num_tokens)
    used, warnings = context_notes(engine, body.context)
    results = [PerplexityResult(text=s.text, perplexity=s.perplexity, num_tokens=s.num_tokens, logprob=s.logprob,
                                oov_count=s.oov_count) for s in corpus.results]
    return PerplexityResponse(model=engine.name, perplexity=corpus.perplexity, num_tokens=corpus.num_tokens,
                              nll=corpus.nll, results=results, context_used=used, warnings=warnings)


@router.post("/rank", response_model=RankResponse)
async def rank(body: RankRequest, request: Request, registry: RegistryDep, settings: SettingsDep,
               batcher: BatcherDep) -> RankResponse:
    """Candidates sorted by log-probability, best first (n-best rescoring, grammar choice)."""
    check_limits(body, settings)
    engine = use_model(request, registry, body.model)
    ranked = rank_scores(await batcher.score(engine, body.candidates, add_eos=True, context=body.context))
    metrics.TOKENS_SCORED.labels(engine.name).inc(sum(s.num_tokens for s in ranked))
    used, warnings = context_notes(engine, body.context)
    results = [RankResult(rank=i, text=s.text, logprob=s.logprob, num_tokens=s.num_tokens, perplexity=s.perplexity,
                          oov_count=s.oov_count) for i, s in enumerate(ranked, start=1)]
    return RankResponse(model=engine.name, results=results, context_used=used, warnings=warnings)
