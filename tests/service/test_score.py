"""POST /v1/score, /v1/perplexity and /v1/rank: shapes, and consistency that holds for any model."""
from __future__ import annotations

import math
import random
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.anyio

TEXTS = ["The game was released in Japan .", "He played for the team in 2010 .",
         "It is the first film of the series ."]


async def post(client: httpx.AsyncClient, path: str, body: dict) -> dict:
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_score_shape(client: httpx.AsyncClient) -> None:
    body = await post(client, "/v1/score", {"texts": TEXTS})
    assert body["model"] == "lstm"  # the default alias
    assert body["context_used"] is False and body["warnings"] == []
    assert [r["text"] for r in body["results"]] == TEXTS
    for r in body["results"]:
        assert set(r) == {"text", "logprob", "num_tokens", "perplexity", "oov_count"}  # no tokens without details
        assert r["logprob"] < 0
        assert r["num_tokens"] == len(r["text"].split()) + 1  # + <eos>
        assert r["perplexity"] == pytest.approx(math.exp(-r["logprob"] / r["num_tokens"]), rel=1e-6)


@pytest.mark.parametrize("model", ["lstm", "gru"])
async def test_score_details_sum_to_total(client: httpx.AsyncClient, model: str) -> None:
    body = await post(client, "/v1/score", {"model": model, "texts": TEXTS + ["zyzzyva qwertyuiop"],
                                            "details": True})
    assert body["model"] == model
    for r in body["results"]:
        assert len(r["tokens"]) == r["num_tokens"]
        assert r["tokens"][-1]["token"] == "<eos>"
        assert sum(t["logprob"] for t in r["tokens"]) == pytest.approx(r["logprob"], abs=1e-4)
        assert all(t["logprob"] <= 0 for t in r["tokens"])
        assert r["oov_count"] == sum(t["oov"] for t in r["tokens"])
    assert body["results"][-1]["oov_count"] == 2


async def test_score_without_eos(client: httpx.AsyncClient) -> None:
    with_eos = (await post(client, "/v1/score", {"texts": TEXTS[:1], "details": True}))["results"][0]
    without = (await post(client, "/v1/score", {"texts": TEXTS[:1], "add_eos": False, "details": True}))["results"][0]
    assert without["num_tokens"] == with_eos["num_tokens"] - 1
    assert without["logprob"] == pytest.approx(with_eos["logprob"] - with_eos["tokens"][-1]["logprob"], abs=1e-4)


async def test_raw_text_is_normalised(client: httpx.AsyncClient) -> None:
    body = await post(client, "/v1/score", {"texts": ["It cost 3,000 dollars.", "It cost 3 @,@ 000 dollars ."],
                                            "details": True})
    raw, tokenized = body["results"]
    assert [t["token"] for t in raw["tokens"]] == [t["token"] for t in tokenized["tokens"]]
    assert raw["logprob"] == pytest.approx(tokenized["logprob"], abs=1e-4)


@pytest.mark.parametrize("model", ["lstm", "gru"])
async def test_perplexity_matches_score(client: httpx.AsyncClient, model: str) -> None:
    scores = (await post(client, "/v1/score", {"model": model, "texts": TEXTS}))["results"]
    body = await post(client, "/v1/perplexity", {"model": model, "texts": TEXTS})
    total_lp = sum(r["logprob"] for r in scores)
    total_n = sum(r["num_tokens"] for r in scores)
    assert body["num_tokens"] == total_n
    assert body["nll"] == pytest.approx(-total_lp, rel=1e-6)
    assert body["perplexity"] == pytest.approx(math.exp(-total_lp / total_n), rel=1e-6)
    assert [r["perplexity"] for r in body["results"]] == pytest.approx([r["perplexity"] for r in scores])
    assert set(body["results"][0]) == {"text", "perplexity", "num_tokens", "logprob", "oov_count"}


@pytest.mark.parametrize("model", ["lstm", "gru"])
async def test_rank_orders_like_score(client: httpx.AsyncClient, model: str) -> None:
    candidates = ["He went to the store .", "He went too the store .", "store the to went He .",
                  "He went to the the store ."]
    scores = (await post(client, "/v1/score", {"model": model, "texts": candidates}))["results"]
    body = await post(client, "/v1/rank", {"model": model, "candidates": candidates})
    expected = [r["text"] for r in sorted(scores, key=lambda r: r["logprob"], reverse=True)]
    assert [r["text"] for r in body["results"]] == expected
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    logprobs = [r["logprob"] for r in body["results"]]
    assert logprobs == sorted(logprobs, reverse=True)


def natural_sentences(corpus: Path, vocab: set[str], count: int) -> list[str]:
    """Sentences of the WikiText-2 test set made only of in-vocabulary words (no <unk>)."""
    out = []
    for line in (corpus / "test.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for sentence in line.split(" . "):
            tokens = sentence.split()
            if 12 <= len(tokens) <= 25 and all(t in vocab and t != "<unk>" for t in tokens):
                out.append(" ".join(tokens) + " .")
                if len(out) == count:
                    return out
    return out


@pytest.mark.parametrize("model", ["lstm", "gru"])
async def test_natural_sentence_beats_its_shuffle(client: httpx.AsyncClient, checkpoints: Path, wikitext2: Path,
                                                  model: str) -> None:
    vocab = set((checkpoints / model / "vocab.txt").read_text(encoding="utf-8").split("\n"))
    sentences = natural_sentences(wikitext2, vocab, 5)
    assert len(sentences) == 5
    rng = random.Random(1234)
    for sentence in sentences:
        words = sentence.split()
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        body = await post(client, "/v1/rank", {"model": model, "candidates": [" ".join(shuffled), sentence]})
        assert body["results"][0]["text"] == sentence, body


async def test_context_is_used_by_a_context_model(client: httpx.AsyncClient) -> None:
    text = ["The song was released as a single ."]
    plain = (await post(client, "/v1/score", {"model": "lstm", "texts": text}))["results"][0]
    body = await post(client, "/v1/score", {"model": "lstm", "texts": text, "context": "Rihanna discography"})
    assert body["context_used"] is True and body["warnings"] == []
    assert body["results"][0]["logprob"] != pytest.approx(plain["logprob"], abs=1e-6)


@pytest.mark.parametrize("path, body", [
    ("/v1/score", {"texts": ["A song ."]}),
    ("/v1/perplexity", {"texts": ["A song ."]}),
    ("/v1/rank", {"candidates": ["A song .", "Song a ."]}),
    ("/v1/next-word", {"text": "The song "}),
    ("/v1/generate", {"prompt": "The song", "max_tokens": 3, "seed": 1}),
])
async def test_context_on_a_model_without_context(client: httpx.AsyncClient, path: str, body: dict) -> None:
    plain = await post(client, path, {"model": "gru", **body})
    answer = await post(client, path, {"model": "gru", "context": "Rihanna discography", **body})
    assert answer["context_used"] is False
    assert answer["warnings"] == ["context ignored: model gru was not trained with a context"]
    assert plain["warnings"] == []
    for key in ("results", "predictions", "choices", "perplexity"):
        assert answer.get(key) == plain.get(key)  # the context really was ignored
