"""The scoring fast path: the tokenizer's cache, scores without per-token detail, responses built without
re-validation, and a burst of concurrent clients admitted -- all with the same answers as before."""
from __future__ import annotations

import asyncio
import gc
import math
import shutil
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from models.checkpoint import load_model
from models.engine import Engine
from models.tokenizer import ENCODE_CACHE_MAX_CHARS, Tokenizer
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.anyio

TEXTS = ["The game was released in Japan .", "He played for the club in the 2005 season.",
         "Zyzzyva qwertyuiop flibbertigibbet .", "It cost $3,000 (state-of-the-art) in 1999!", "The end ."]
RESULT_KEYS = {"text", "logprob", "num_tokens", "perplexity", "oov_count"}


@pytest.fixture
def engine(checkpoints: Path) -> Engine:
    return Engine(load_model(checkpoints / "lstm"), state_cache_bytes=0)


def test_cached_encode_equals_uncached(engine: Engine) -> None:
    tok = engine.tokenizer
    plain = Tokenizer(tok.vocab, tok.style, cache_texts=0)
    assert plain.cache_info() is None
    for text in TEXTS + TEXTS:
        cached, fresh = tok.encode(text), plain.encode(text)
        assert (cached.tokens, cached.ids, cached.oov) == (fresh.tokens, fresh.ids, fresh.oov)
    info = tok.cache_info()
    assert info.hits >= len(TEXTS) and info.currsize >= len(set(TEXTS))


def test_cached_encode_hands_out_its_own_lists(engine: Engine) -> None:
    """A caller that changes what it got does not change what the next caller gets."""
    first = engine.tokenizer.encode(TEXTS[0])
    expected = (list(first.tokens), list(first.ids), list(first.oov))
    first.ids.append(0)
    first.tokens.clear()
    first.oov[0] = not first.oov[0]
    again = engine.tokenizer.encode(TEXTS[0])
    assert (again.tokens, again.ids, again.oov) == expected


def test_long_texts_are_encoded_but_not_remembered(engine: Engine) -> None:
    tok = engine.tokenizer
    long_text = "the game was released in japan . " * (ENCODE_CACHE_MAX_CHARS // 20)
    assert len(long_text) > ENCODE_CACHE_MAX_CHARS
    size = tok.cache_info().currsize
    enc = tok.encode(long_text)
    assert tok.cache_info().currsize == size
    assert enc.ids == Tokenizer(tok.vocab, tok.style, cache_texts=0).encode(long_text).ids


@pytest.mark.parametrize("convention", ["unk-word", "open-vocab"])
def test_scores_without_details_have_the_same_totals(engine: Engine, convention: str) -> None:
    full = engine.score(TEXTS, oov_convention=convention)
    short = engine.score(TEXTS, oov_convention=convention, details=False)
    for a, b in zip(full, short):
        assert (a.text, a.logprob, a.num_tokens, a.oov_count, a.oov_convention) == \
            (b.text, b.logprob, b.num_tokens, b.oov_count, b.oov_convention)
        assert a.perplexity == b.perplexity
        assert len(a.tokens) == a.num_tokens and b.tokens == []
    # top_logprobs needs the per-token objects, so it keeps them
    assert all(len(s.tokens) == s.num_tokens for s in engine.score(TEXTS[:2], top_logprobs=2, details=False))


async def test_score_response_without_details_is_unchanged(client: httpx.AsyncClient, engine: Engine) -> None:
    r = await client.post("/v1/score", json={"model": "lstm", "texts": TEXTS[:4]})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = engine.score(TEXTS[:4], oov_convention="open-vocab")
    assert body["model"] == "lstm" and body["oov_convention"] == expected[0].oov_convention
    for got, want in zip(body["results"], expected):
        assert set(got) == RESULT_KEYS  # no "tokens" key at all without details
        assert got["text"] == want.text and got["num_tokens"] == want.num_tokens
        assert got["oov_count"] == want.oov_count
        assert math.isclose(got["logprob"], want.logprob, rel_tol=1e-6)
        assert math.isclose(got["perplexity"], want.perplexity, rel_tol=1e-6)


async def test_score_response_with_details_lists_every_token(client: httpx.AsyncClient, engine: Engine) -> None:
    r = await client.post("/v1/score", json={"model": "lstm", "texts": TEXTS[2:4], "details": True})
    assert r.status_code == 200, r.text
    expected = engine.score(TEXTS[2:4], oov_convention="open-vocab")
    for got, want in zip(r.json()["results"], expected):
        assert set(got) == RESULT_KEYS | {"tokens"}
        assert [t["token"] for t in got["tokens"]] == [t.token for t in want.tokens]
        assert [t["oov"] for t in got["tokens"]] == [t.oov for t in want.tokens]
        assert math.isclose(sum(t["logprob"] for t in got["tokens"]), got["logprob"], rel_tol=1e-6)


async def test_concurrent_requests_with_and_without_details(client: httpx.AsyncClient) -> None:
    """Merged by the batcher or not, each request gets its own shape and the numbers it gets alone."""
    alone = [(await client.post("/v1/score", json={"model": "lstm", "texts": [t]})).json()["results"][0]
             for t in TEXTS]
    bodies = [{"model": "lstm", "texts": [t], "details": i % 2 == 1} for i, t in enumerate(TEXTS * 2)]
    answers = await asyncio.gather(*(client.post("/v1/score", json=b) for b in bodies))
    for body, r in zip(bodies, answers):
        assert r.status_code == 200, r.text
        got = r.json()["results"][0]
        want = alone[TEXTS.index(body["texts"][0])]
        assert ("tokens" in got) == body["details"]
        assert got["num_tokens"] == want["num_tokens"]
        assert math.isclose(got["logprob"], want["logprob"], rel_tol=1e-5)


async def test_perplexity_and_rank_answers_are_unchanged(client: httpx.AsyncClient, engine: Engine) -> None:
    r = await client.post("/v1/perplexity", json={"model": "lstm", "texts": TEXTS[:3]})
    assert r.status_code == 200, r.text
    corpus = engine.perplexity(TEXTS[:3], oov_convention="open-vocab")
    assert r.json()["num_tokens"] == corpus.num_tokens
    assert math.isclose(r.json()["perplexity"], corpus.perplexity, rel_tol=1e-6)
    assert set(r.json()["results"][0]) == RESULT_KEYS
    r = await client.post("/v1/rank", json={"model": "lstm", "candidates": TEXTS[:3]})
    assert r.status_code == 200, r.text
    assert [x["text"] for x in r.json()["results"]] == [s.text for s in engine.rank(TEXTS[:3])]
    assert [x["rank"] for x in r.json()["results"]] == [1, 2, 3]


async def test_32_concurrent_clients_are_all_admitted(checkpoints: Path) -> None:
    """With the default admission settings a burst of 32 one-text requests is served, none refused."""
    def refused() -> float:
        return sum(REGISTRY.get_sample_value("rnnlm_admission_rejected_total", {"reason": reason}) or 0.0
                   for reason in ("limit", "wait"))

    app = create_app(Settings(checkpoints=checkpoints, reload_interval_s=0))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            before = refused()
            texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(32)]
            answers = await asyncio.gather(*(client.post("/v1/score", json={"model": "lstm", "texts": [t]})
                                             for t in texts))
            assert [r.status_code for r in answers] == [200] * 32
            assert [r.json()["results"][0]["text"] for r in answers] == texts
            assert refused() == before


async def test_serving_freezes_the_loaded_objects_out_of_the_collector(settings: Settings) -> None:
    """Models, vocabularies and modules are not traversed by the cyclic GC while the app runs (a full
    collection of them stalled the event loop); they are handed back to it when the app stops."""
    before = gc.get_freeze_count()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == 0



async def test_a_model_loaded_while_serving_is_frozen_too(settings: Settings, checkpoints: Path) -> None:
    """A hot-reloaded model joins the start-up objects outside the collector's full passes."""
    app = create_app(settings.model_copy(update={"reload_interval_s": 0}))
    async with app.router.lifespan_context(app):
        frozen = gc.get_freeze_count()
        shutil.copytree(checkpoints / "gru", checkpoints / "gru2")
        app.state.registry.reload()
        assert "gru2" in app.state.registry.names()
        assert gc.get_freeze_count() > frozen
    assert gc.get_freeze_count() == 0
