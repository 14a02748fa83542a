"""POST /v1/next-word and /v1/generate (JSON and server-sent events)."""
from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def post(client: httpx.AsyncClient, path: str, body: dict) -> dict:
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("model", ["lstm", "gru"])
@pytest.mark.parametrize("text", ["The film was released in ", "", "He said that "])
async def test_next_word_distribution(client: httpx.AsyncClient, model: str, text: str) -> None:
    body = await post(client, "/v1/next-word", {"model": model, "text": text, "k": 10})
    assert body["model"] == model and body["completing"] is None
    preds = body["predictions"]
    assert len(preds) == 10
    probs = [p["prob"] for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert all(0 < p <= 1 for p in probs)
    assert sum(probs) <= 1 + 1e-6
    assert len({p["word"] for p in preds}) == 10
    assert not {"<unk>", "<eos>"} & {p["word"] for p in preds}


@pytest.mark.parametrize("model", ["lstm", "gru"])
async def test_next_word_completes_a_half_typed_word(client: httpx.AsyncClient, model: str) -> None:
    body = await post(client, "/v1/next-word", {"model": model, "text": "The film was re", "k": 50})
    assert body["completing"] == "re"
    words = [p["word"] for p in body["predictions"]]
    assert words and all(w.startswith("re") for w in words)
    probs = [p["prob"] for p in body["predictions"]]
    assert probs == sorted(probs, reverse=True)
    # All completions (k large enough to cover every vocabulary word with the prefix) share the mass.
    everything = await post(client, "/v1/next-word", {"model": model, "text": "The film was rel", "k": 50})
    assert len(everything["predictions"]) < 50
    assert sum(p["prob"] for p in everything["predictions"]) == pytest.approx(1.0, abs=1e-4)


async def test_next_word_unknown_prefix_predicts_nothing(client: httpx.AsyncClient) -> None:
    body = await post(client, "/v1/next-word", {"text": "The film was qzxq"})
    assert body["completing"] == "qzxq" and body["predictions"] == []


async def test_next_word_uses_context(client: httpx.AsyncClient) -> None:
    body = await post(client, "/v1/next-word", {"model": "lstm", "text": "The ", "context": "Tropical Storm"})
    assert body["context_used"] is True and body["warnings"] == []


@pytest.mark.parametrize("model", ["lstm", "gru"])
async def test_generate_same_seed_same_text(client: httpx.AsyncClient, model: str) -> None:
    req = {"model": model, "prompt": "The game", "max_tokens": 12, "temperature": 0.9, "top_p": 0.95,
           "top_k": 50, "seed": 7, "n": 2}
    a = await post(client, "/v1/generate", req)
    b = await post(client, "/v1/generate", req)
    assert a == b
    assert a["model"] == model and len(a["choices"]) == 2
    assert [c["index"] for c in a["choices"]] == [0, 1]
    for c in a["choices"]:
        assert c["finish_reason"] in ("length", "stop", "eos")
        assert len(c["tokens"]) <= 12
        assert (len(c["tokens"]) == 12) == (c["finish_reason"] == "length")
        assert c["logprob"] <= 0
        assert "<unk>" not in c["tokens"]


async def test_generate_greedy_and_defaults(client: httpx.AsyncClient) -> None:
    greedy = {"prompt": "In 2010 , the", "temperature": 0, "max_tokens": 5}
    a = await post(client, "/v1/generate", greedy)
    b = await post(client, "/v1/generate", {**greedy, "seed": 99})
    assert a["choices"] == b["choices"]  # greedy decoding ignores the seed
    body = await post(client, "/v1/generate", {})
    assert body["model"] == "lstm" and len(body["choices"]) == 1


async def test_generate_stop_strings(client: httpx.AsyncClient) -> None:
    body = await post(client, "/v1/generate", {"prompt": "The", "max_tokens": 64, "temperature": 0, "stop": ["."]})
    choice = body["choices"][0]
    assert "." not in choice["text"]
    if choice["finish_reason"] == "stop":
        assert "." in " ".join(choice["tokens"])


def parse_sse(text: str) -> list[str]:
    return [line[len("data:"):].strip() for line in text.splitlines() if line.startswith("data:")]


async def test_generate_stream(client: httpx.AsyncClient) -> None:
    req = {"model": "gru", "prompt": "The album", "max_tokens": 8, "seed": 3, "n": 2}
    expected = (await post(client, "/v1/generate", req))["choices"]
    async with client.stream("POST", "/v1/generate", json={**req, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join([chunk async for chunk in r.aiter_text()])
    data = parse_sse(text)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    for choice in expected:
        mine = [e for e in events if e["index"] == choice["index"]]
        tokens, final = mine[:-1], mine[-1]
        assert [e["token"] for e in tokens] == choice["tokens"]
        assert all(e["finish_reason"] is None and e["logprob"] <= 0 for e in tokens)
        assert sum(e["logprob"] for e in tokens) == pytest.approx(choice["logprob"], abs=1e-4)
        assert final["token"] is None and final["finish_reason"] == choice["finish_reason"]
        assert final["text"] == choice["text"]
    assert sum(e["finish_reason"] is not None for e in events) == 2


async def test_stream_with_bad_input_is_a_plain_error(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/generate", json={"stream": True, "top_p": 1.5})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "top_p"


async def test_stream_raw_format_and_context_warning(client: httpx.AsyncClient) -> None:
    req = {"model": "gru", "prompt": "The", "max_tokens": 3, "seed": 1, "stream": True, "context": "Storm"}
    async with client.stream("POST", "/v1/generate", json=req) as r:
        assert r.status_code == 200
        assert r.headers["x-context-used"] == "false"
        assert "not trained with a context" in r.headers["x-warnings"]
        raw = (await r.aread()).decode()
    frames = [f for f in raw.replace("\r\n", "\n").split("\n\n") if f.strip() and not f.startswith(":")]
    assert all(f.startswith("data: ") and "\n" not in f for f in frames)  # one data line per event
    assert frames[-1] == "data: [DONE]"
    first = json.loads(frames[0][len("data: "):])
    assert set(first) == {"index", "token", "text", "logprob", "finish_reason"}
