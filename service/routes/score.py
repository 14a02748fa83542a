"""Scoring: per-text log-probabilities, corpus perplexity, and ranking of alternatives.

All three go through the micro-batcher, which merges concurrent requests into one engine call.
"""
from __future__ import annotations

from fastapi import APIRouter

from service.deps import ScoringDep
from service.schemas import (
    ErrorResponse,
    PerplexityRequest,
    PerplexityResponse,
    RankRequest,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
)

ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}
router = APIRouter(prefix="/v1", tags=["scoring"], responses=ERRORS)


@router.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, scoring: ScoringDep) -> ScoreResponse:
    """log p(text) for each text (natural log), with per-token detail on request."""
    return await scoring.score(body)


@router.post("/perplexity", response_model=PerplexityResponse)
async def perplexity(body: PerplexityRequest, scoring: ScoringDep) -> PerplexityResponse:
    """Perplexity over all tokens of all texts (each text ends with <eos>), plus per text."""
    return await scoring.perplexity(body)


@router.post("/rank", response_model=RankResponse)
async def rank(body: RankRequest, scoring: ScoringDep) -> RankResponse:
    """Candidates sorted by log-probability, best first (n-best rescoring, grammar choice)."""
    return await scoring.rank(body)
