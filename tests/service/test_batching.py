"""Micro-batching and the state cache through the service: same answers, merged calls, bounded queue, metrics."""
from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from models.checkpoint import load_model
from models.engine import Engine
from service.app import create_app
from service.registry import ModelRegistry
from service.settings import Settings

pytestmark = pytest.mark.anyio

TEXTS = ["The game was released in Japan .", "He played", "It is the first film of the series , and it was "
         "released in 2011 to positive reviews from critics .", "Zyzzyva qwertyuiop .", "The end .",
         "In 1995 the band recorded its second album in London with a new producer ."]


@asynccontextmanager
async def serving(settings: Settings, **changes) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings.model_copy(update=changes))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield app, client


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_batched_engine_scores_equal_one_at_a_time(tiny_model: Path) -> None:
    engine = Engine(load_model(tiny_model))
    small = Engine(engine.loaded, max_batch_tokens=40)  # forces several batches of similar lengths
    texts = TEXTS * 3 + ["A"]
    for context in (None, "Tropical Storm"):
        for add_eos in (True, False):
            single = [engine.score([t], add_eos=add_eos, context=context)[0] for t in texts]
            for batched in (engine.score(texts, add_eos=add_eos, context=context),
                            small.score(texts, add_eos=add_eos, context=context)):
                for a, b in zip(batched, single):
                    assert a.text == b.text and a.num_tokens == b.num_tokens
                    assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
                    assert [t.logprob for t in a.tokens] == pytest.approx([t.logprob for t in b.tokens], abs=1e-5)


async def test_concurrent_requests_are_merged_and_split_back(settings: Settings) -> None:
    requests = [("/v1/score", {"model": "lstm", "texts": TEXTS[i:i + 2], "details": True,
                               "add_eos": i % 2 == 0, "context": "Tropical Storm" if i % 3 == 0 else None})
                for i in range(len(TEXTS))]
    requests += [("/v1/perplexity", {"model": "lstm", "texts": TEXTS[:3]}),
                 ("/v1/rank", {"model": "lstm", "candidates": TEXTS[2:5]}),
                 ("/v1/score", {"model": "gru", "texts": TEXTS[:4]})]
    async with serving(settings, batch_wait_ms=300, max_batch_texts=64) as (app, client):
        calls = sample("rnnlm_batch_size_count", model="lstm")
        responses = await asyncio.gather(*(client.post(path, json=body) for path, body in requests))
        merged = sample("rnnlm_batch_size_count", model="lstm") - calls
        engines = {name: app.state.registry.get(name) for name in ("lstm", "gru")}
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    # Eight lstm requests in four (add_eos, context) groups, the first perhaps alone (idle model).
    assert merged <= 5
    for (path, body), response in zip(requests, responses):
        engine, got = engines[body["model"]], response.json()
        if path == "/v1/score":
            expected = [engine.score([t], add_eos=body["add_eos"] if "add_eos" in body else True,
                                     context=body.get("context"))[0] for t in body["texts"]]
            assert [r["text"] for r in got["results"]] == body["texts"]
            for r, e in zip(got["results"], expected):
                assert r["logprob"] == pytest.approx(e.logprob, abs=1e-5)
                assert r["num_tokens"] == e.num_tokens
                if body.get("details"):
                    assert [t["logprob"] for t in r["tokens"]] == pytest.approx([t.logprob for t in e.tokens],
                                                                                abs=1e-5)
        elif path == "/v1/perplexity":
            expected = engine.perplexity(body["texts"])
            assert got["perplexity"] == pytest.approx(expected.perplexity, rel=1e-5)
            assert got["num_tokens"] == expected.num_tokens
        else:
            expected = engine.rank(body["candidates"])
            assert [r["text"] for r in got["results"]] == [s.text for s in expected]
            assert [r["logprob"] for r in got["results"]] == pytest.approx([s.logprob for s in expected], abs=1e-5)


async def test_batching_off_gives_the_same_answers(settings: Settings) -> None:
    body = {"model": "lstm", "texts": TEXTS, "details": True}
    async with serving(settings, batching=True) as (_, client):
        on = (await client.post("/v1/score", json=body)).json()
    async with serving(settings, batching=False) as (_, client):
        calls = sample("rnnlm_batch_size_count", model="lstm")
        off = (await client.post("/v1/score", json=body)).json()
        assert sample("rnnlm_batch_size_count", model="lstm") == calls  # not through the batcher
    for a, b in zip(on["results"], off["results"]):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-5)


async def test_full_queue_answers_503_with_retry_after(settings: Settings) -> None:
    async with serving(settings, max_queue=1, batch_wait_ms=0) as (app, client):
        engine = app.state.registry.get("lstm")
        score = engine.score

        def slow_score(*args, **kwargs):
            time.sleep(0.3)
            return score(*args, **kwargs)
        engine.score = slow_score
        responses = await asyncio.gather(*(client.post("/v1/score", json={"texts": [t]}) for t in TEXTS))
        metrics = (await client.get("/metrics")).text
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) == {200, 503}
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            error = r.json()["error"]
            assert error["type"] == "overloaded" and "lstm" in error["message"] and "param" in error
    assert 'rnnlm_batch_queue_depth{model="lstm"}' in metrics
    assert 'rnnlm_batch_size_bucket{le="1.0",model="lstm"}' in metrics


async def test_next_word_state_cache_metrics(settings: Settings) -> None:
    async with serving(settings) as (_, client):
        hits, misses = (sample("rnnlm_state_cache_hits_total", model="lstm"),
                        sample("rnnlm_state_cache_misses_total", model="lstm"))
        typed = ""
        for word in "The game was released in Japan".split():
            typed += word + " "
            r = await client.post("/v1/next-word", json={"model": "lstm", "text": typed})
            assert r.status_code == 200
        assert sample("rnnlm_state_cache_misses_total", model="lstm") == misses + 1
        assert sample("rnnlm_state_cache_hits_total", model="lstm") == hits + 5
        assert sample("rnnlm_state_cache_bytes", model="lstm") > 0
    async with serving(settings, state_cache_mb=0) as (app, client):
        await client.post("/v1/next-word", json={"model": "lstm", "text": "The game "})
        assert len(app.state.registry.get("lstm").state_cache) == 0


def test_reload_empties_the_state_cache(checkpoints: Path) -> None:
    registry = ModelRegistry(Settings(checkpoints=checkpoints, reload_interval_s=0))
    registry.reload()
    old = registry.get("lstm")
    typed = "The game was released in "
    before = old.next_word(typed)
    assert len(old.state_cache) > 0
    shutil.rmtree(checkpoints / "lstm")
    shutil.copytree(checkpoints / "gru", checkpoints / "lstm")  # new weights under the same name
    registry.reload()
    new = registry.get("lstm")
    assert new is not old and len(new.state_cache) == 0
    after = new.next_word(typed)
    assert after.predictions != before.predictions  # not answered from the old model's states
    assert new.state_cache.stats()["misses"] == 1


def test_quantized_model_setting(checkpoints: Path) -> None:
    registry = ModelRegistry(Settings(checkpoints=checkpoints, reload_interval_s=0, quantize=["gru"]))
    registry.reload()
    gru, lstm = registry.get("gru"), registry.get("lstm")
    assert gru.quantized == "int8" and lstm.quantized is None
    assert gru.info()["parameters"] == Engine(load_model(checkpoints / "gru")).info()["parameters"]
    plain = Engine(load_model(checkpoints / "gru"))
    for q, p in zip(gru.score(TEXTS), plain.score(TEXTS)):
        assert q.logprob == pytest.approx(p.logprob, rel=0.05)  # int8 is close, not equal
    assert gru.next_word("The game ").predictions
