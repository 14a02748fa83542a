"""The neural cache and the OOV conventions through the API: /v1/score, /v1/perplexity, /v1/rank, /v1/next-word."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from models.checkpoint import load_model
from models.data import encode_lines, read_lines
from models.neural_cache import fit_cache, stream_features, write_cache_block
from models.oov import estimate_unseen, write_oov_block
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.anyio

DOC = ["The club played in the city .", "The club won the cup in 1990 .", "The club moved to a new ground ."]
KNOWN, INVENTED = "The game was released in Japan .", "The game was released in Zorblaxia ."


@pytest.fixture
async def client(checkpoints: Path, settings: Settings, wikitext2: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app over the tiny models; the lstm has a fitted cache and both have the unseen-word estimate."""
    train = read_lines(wikitext2 / "train.txt")[:3000]
    for name in ("lstm", "gru"):
        loaded = load_model(checkpoints / name)
        write_oov_block(checkpoints / name, estimate_unseen(train, loaded.tokenizer.vocab))
    lstm = load_model(checkpoints / "lstm")
    valid = encode_lines(read_lines(wikitext2 / "valid.txt")[:150], lstm.tokenizer.vocab, titles=True)
    fit = fit_cache(stream_features(lstm.model, valid), windows=(100,), theta_scales=(1.0,))
    write_cache_block(checkpoints / "lstm", fit.params, {})
    app: FastAPI = create_app(settings)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c):
        yield c


async def post(client: httpx.AsyncClient, path: str, body: dict, status: int = 200) -> dict:
    r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


async def test_score_defaults_to_open_vocabulary(client: httpx.AsyncClient) -> None:
    body = await post(client, "/v1/score", {"texts": [KNOWN, INVENTED], "details": True})
    assert body["oov_convention"] == "open-vocab" and body["cache"] is False
    known, invented = body["results"]
    assert invented["oov_count"] == 1 and invented["logprob"] < known["logprob"]
    old = await post(client, "/v1/score", {"texts": [KNOWN, INVENTED], "details": True, "oov_convention": "unk-word"})
    assert old["oov_convention"] == "unk-word"
    penalty = old["results"][1]["logprob"] - invented["logprob"]
    assert penalty > 5  # log N_unseen: thousands of unseen words share <unk>
    assert old["results"][0]["logprob"] == pytest.approx(known["logprob"], abs=1e-6)
    assert sum(t["logprob"] for t in invented["tokens"]) == pytest.approx(invented["logprob"], abs=1e-4)


async def test_perplexity_keeps_unk_as_a_word_and_rank_does_not(client: httpx.AsyncClient) -> None:
    body = await post(client, "/v1/perplexity", {"texts": [INVENTED]})
    assert body["oov_convention"] == "unk-word"
    opened = await post(client, "/v1/perplexity", {"texts": [INVENTED], "oov_convention": "open-vocab"})
    assert opened["perplexity"] > body["perplexity"]
    ranked = await post(client, "/v1/rank", {"candidates": [INVENTED, KNOWN]})
    assert ranked["oov_convention"] == "open-vocab" and ranked["results"][0]["text"] == KNOWN


async def test_document_scoring_with_the_cache(client: httpx.AsyncClient) -> None:
    plain = await post(client, "/v1/score", {"texts": DOC, "details": True})
    cached = await post(client, "/v1/score", {"texts": DOC, "details": True, "cache": True})
    assert cached["cache"] is True and [r["num_tokens"] for r in cached["results"]] == \
        [r["num_tokens"] for r in plain["results"]]
    club = [t["logprob"] for r in cached["results"][1:] for t in r["tokens"] if t["token"] == "club"]
    club_plain = [t["logprob"] for r in plain["results"][1:] for t in r["tokens"] if t["token"] == "club"]
    assert all(c > p for c, p in zip(club, club_plain))  # the document's own word comes back
    ppl = await post(client, "/v1/perplexity", {"texts": DOC, "cache": True})
    assert ppl["cache"] is True
    assert ppl["nll"] == pytest.approx(-sum(r["logprob"] for r in cached["results"]), rel=1e-6)


async def test_a_model_without_a_cache_is_a_clear_422(client: httpx.AsyncClient) -> None:
    for path, body in (("/v1/score", {"model": "gru", "texts": DOC, "cache": True}),
                       ("/v1/perplexity", {"model": "gru", "texts": DOC, "cache": True}),
                       ("/v1/next-word", {"model": "gru", "text": "The club ", "cache": True})):
        err = (await post(client, path, body, status=422))["error"]
        assert err["param"] == "cache" and "fit-cache" in err["message"]


async def test_bad_options_are_refused(client: httpx.AsyncClient) -> None:
    err = (await post(client, "/v1/score", {"texts": DOC, "oov_convention": "closed"}, status=422))["error"]
    assert "oov_convention" in err["param"]
    err = (await post(client, "/v1/score", {"texts": DOC, "cache": "yes"}, status=422))["error"]
    assert "cache" in err["param"]


async def test_next_word_with_the_cache(client: httpx.AsyncClient) -> None:
    text = "The club played in the city . The "
    plain = await post(client, "/v1/next-word", {"text": text, "k": 5})
    cached = await post(client, "/v1/next-word", {"text": text, "k": 5, "cache": True})
    assert plain["cache"] is False and cached["cache"] is True
    prob = {p["word"]: p["prob"] for p in cached["predictions"]}
    before = {p["word"]: p["prob"] for p in plain["predictions"]}
    assert prob.get("club", 0) > before.get("club", 0)
