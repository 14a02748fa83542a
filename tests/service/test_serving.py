"""The serving layer used as a library, without HTTP: limits, model and context resolved once,
the engine's own results converted to response schemas, metrics recorded."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from models.engine import GenerationParams, ResolvedContext
from models.errors import InputError
from service.batcher import Batcher
from service.errors import BadRequestError, ConflictError, ModelNotFoundError
from service.jobs import JobConflict, JobNotFound, JobStore
from service.registry import ModelRegistry
from service.schemas import GenerateRequest, JobRequest, NextWordRequest, PerplexityRequest, RankRequest, ScoreRequest
from service.serving import GenerationService, JobService, NextWordService, ScoringService
from service.settings import Settings

pytestmark = pytest.mark.anyio
TEXTS = ["The album was released in 1999 .", "He played for the club .", "the the the ."]
TOPIC = "Valkyria Chronicles"


@pytest.fixture
def registry(settings: Settings) -> ModelRegistry:
    registry = ModelRegistry(settings)
    registry.reload()
    return registry


@pytest.fixture(params=[True, False], ids=["batched", "direct"])
async def scoring(request: pytest.FixtureRequest, registry: ModelRegistry,
                  settings: Settings) -> AsyncIterator[ScoringService]:
    settings = settings.model_copy(update={"batching": request.param})
    batcher = Batcher(settings)
    try:
        yield ScoringService(registry, batcher, settings)
    finally:
        await batcher.close()


def counter(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


async def test_score_is_the_engine_score_with_details(scoring: ScoringService, registry: ModelRegistry) -> None:
    expected = registry.get("lstm").score(TEXTS, context=TOPIC)
    before = counter("rnnlm_tokens_scored_total", "lstm")
    response = await scoring.score(ScoreRequest(texts=TEXTS, context=TOPIC, details=True))
    assert response.model == "lstm" and response.context_used is True and response.warnings == []
    for got, want in zip(response.results, expected, strict=True):
        assert (got.text, got.num_tokens, got.oov_count) == (want.text, want.num_tokens, want.oov_count)
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert [t.token for t in got.tokens] == [t.token for t in want.tokens]
    assert counter("rnnlm_tokens_scored_total", "lstm") - before == sum(s.num_tokens for s in expected)
    plain = await scoring.score(ScoreRequest(texts=TEXTS))
    assert all(r.tokens is None for r in plain.results)


async def test_perplexity_and_rank_are_the_engine_s_own(scoring: ScoringService, registry: ModelRegistry) -> None:
    engine = registry.get("gru")
    corpus = engine.perplexity(TEXTS)
    response = await scoring.perplexity(PerplexityRequest(model="gru", texts=TEXTS))
    assert response.perplexity == pytest.approx(corpus.perplexity, rel=1e-5)
    assert (response.num_tokens, response.nll) == (corpus.num_tokens, pytest.approx(corpus.nll, abs=1e-3))
    ranked = await scoring.rank(RankRequest(model="gru", candidates=TEXTS))
    assert [r.text for r in ranked.results] == [s.text for s in engine.rank(TEXTS)]
    assert [r.rank for r in ranked.results] == [1, 2, 3]


async def test_context_is_resolved_once_per_request(scoring: ScoringService) -> None:
    ignored = await scoring.score(ScoreRequest(model="gru", texts=TEXTS[:1], context=TOPIC))
    assert ignored.context_used is False
    assert ignored.warnings == ["context ignored: model gru was not trained with a context"]
    none = await scoring.rank(RankRequest(model="lstm", candidates=TEXTS[:2]))
    assert none.context_used is False and none.warnings == []


async def test_limits_and_unknown_models_raise_domain_errors(scoring: ScoringService) -> None:
    with pytest.raises(InputError) as excinfo:
        await scoring.score(ScoreRequest(texts=["a"] * 9))  # the settings fixture allows 8
    assert excinfo.value.param == "texts"
    with pytest.raises(InputError) as excinfo:
        await scoring.perplexity(PerplexityRequest(texts=["word " * 41]))
    assert excinfo.value.param == "texts.0"
    with pytest.raises(ModelNotFoundError) as excinfo:
        await scoring.rank(RankRequest(model="nope", candidates=["a"]))
    assert excinfo.value.param == "model"


async def test_next_word(registry: ModelRegistry, settings: Settings) -> None:
    service = NextWordService(registry, settings)
    response = await service.next_word(NextWordRequest(text="The first season of the ", k=3, context=TOPIC))
    expected = registry.get("lstm").next_word("The first season of the ", k=3, context=TOPIC)
    assert [p.word for p in response.predictions] == [p.word for p in expected.predictions]
    assert response.context_used is True and response.completing is None
    completing = await service.next_word(NextWordRequest(model="gru", text="He was born in th", context=TOPIC))
    assert completing.completing == "th" and all(p.word.startswith("th") for p in completing.predictions)
    assert completing.context_used is False and completing.warnings
    with pytest.raises(InputError):
        await service.next_word(NextWordRequest(text="a", k=51))


async def test_generate_and_stream_agree(registry: ModelRegistry, settings: Settings) -> None:
    service = GenerationService(registry, settings)
    body = dict(prompt="The game", context=TOPIC, max_tokens=6, temperature=0.8, seed=3, n=2)
    before = counter("rnnlm_tokens_generated_total", "lstm")
    whole = await service.generate(GenerateRequest(**body))
    assert whole.context_used is True and len(whole.choices) == 2
    generated = sum(len(c.tokens) for c in whole.choices)
    assert counter("rnnlm_tokens_generated_total", "lstm") - before == generated
    stream = await service.stream(GenerateRequest(**body, stream=True))
    assert stream.model == "lstm" and stream.context.used
    chunks = [chunk async for chunk in stream.chunks]
    assert chunks[-1] == "[DONE]"
    events = [json.loads(c) for c in chunks[:-1]]
    finals = {e["index"]: e for e in events if e["finish_reason"] is not None}
    assert [finals[c.index]["text"] for c in whole.choices] == [c.text for c in whole.choices]
    assert counter("rnnlm_tokens_generated_total", "lstm") - before == 2 * generated
    with pytest.raises(InputError):
        await service.stream(GenerateRequest(prompt="x", max_tokens=65, stream=True))


async def test_resolved_context_stands_for_its_text(registry: ModelRegistry) -> None:
    engine = registry.get("lstm")
    resolved = engine.resolve_context(TOPIC)
    assert resolved.used and resolved.ids and resolved.key == resolved.ids
    assert engine.resolve_context(resolved) is resolved
    assert [s.logprob for s in engine.score(TEXTS, context=resolved)] == \
        pytest.approx([s.logprob for s in engine.score(TEXTS, context=TOPIC)], abs=1e-6)
    params = GenerationParams(max_tokens=4, temperature=0, seed=1)
    assert engine.generate("The game", params, context=resolved).choices[0].tokens == \
        engine.generate("The game", params, context=TOPIC).choices[0].tokens
    for blank in (None, "", "  "):
        assert engine.resolve_context(blank) == ResolvedContext(blank)
    assert registry.get("gru").resolve_context("").warnings  # a context-less model says it ignored one


# ---- jobs --------------------------------------------------------------------------------------
@pytest.fixture
def jobs(job_settings: Settings) -> JobService:
    return JobService(JobStore(job_settings.jobs_db), job_settings)


def job_request(tiny_job, **overrides) -> JobRequest:
    return JobRequest(**{"type": "train", "name": "tiny", **tiny_job(), **overrides})


def test_jobs_submit_get_list_cancel(jobs: JobService, tiny_job) -> None:
    created = jobs.submit(job_request(tiny_job))
    assert created.status == "queued"
    info = jobs.get(created.id)
    assert info.name == "tiny" and info.params["data"].endswith("wt2-400")
    assert [j.id for j in jobs.list_jobs("queued", 10).data] == [created.id]
    assert jobs.cancel(created.id).status == "cancelled"
    with pytest.raises(JobConflict):
        jobs.cancel(created.id)
    with pytest.raises(JobNotFound):
        jobs.get("nope")


def test_jobs_refusals_are_domain_errors(jobs: JobService, tiny_job, tmp_path) -> None:
    with pytest.raises(BadRequestError) as excinfo:
        jobs.submit(job_request(tiny_job, data=str(tmp_path)))
    assert excinfo.value.param == "data" and "outside the allowed data roots" in str(excinfo.value)
    with pytest.raises(ConflictError) as excinfo:
        jobs.submit(job_request(tiny_job, name="teacher"))
    assert excinfo.value.param == "name"
    with pytest.raises(ModelNotFoundError) as excinfo:
        jobs.submit(job_request(tiny_job, type="distill", teacher="ghost", max_vocab=None))
    assert excinfo.value.param == "teacher"
    jobs.submit(job_request(tiny_job))
    with pytest.raises(ConflictError) as excinfo:  # the store refuses a second job training the same name
        jobs.submit(job_request(tiny_job))
    assert excinfo.value.param == "name"
