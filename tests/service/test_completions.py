"""POST /v1/completions (OpenAI's protocol) through httpx: scoring with echo, generation, streaming, errors;
and the OpenAI shape of GET /v1/models."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from models.tokenizer import Vocab

pytestmark = pytest.mark.anyio

SENTENCE = "The film was released in the United States ."


async def completion(client: httpx.AsyncClient, **body) -> dict:
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def scored_tokens(client: httpx.AsyncClient, text: str, **extra) -> list[dict]:
    r = await client.post("/v1/score", json={"texts": [text], "add_eos": False, "details": True, **extra})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["tokens"]


async def test_echo_scores_the_prompt_like_v1_score(client: httpx.AsyncClient) -> None:
    body = await completion(client, model="lstm", prompt=SENTENCE, max_tokens=0, echo=True, logprobs=0)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "lstm"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["text"] == SENTENCE and choice["finish_reason"] == "length" and choice["index"] == 0
    lp = choice["logprobs"]
    native = await scored_tokens(client, SENTENCE)
    assert lp["tokens"] == ["<eos>"] + [t["token"] for t in native]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx([t["logprob"] for t in native], abs=1e-6)
    assert [list(top) for top in lp["top_logprobs"][1:]] == [[t] for t in lp["tokens"][1:]]  # logprobs 0: itself
    assert [SENTENCE[o:o + len(t)] for o, t in zip(lp["text_offset"][1:], lp["tokens"][1:])] == lp["tokens"][1:]
    n = len(lp["tokens"])
    assert body["usage"] == {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n}


async def test_top_logprobs_come_from_the_same_pass(client: httpx.AsyncClient) -> None:
    body = await completion(client, prompt=SENTENCE, max_tokens=0, echo=True, logprobs=3)
    lp = body["choices"][0]["logprobs"]
    native = await scored_tokens(client, SENTENCE)
    assert lp["token_logprobs"][1:] == pytest.approx([t["logprob"] for t in native], abs=1e-4)
    for token, logprob, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        assert token in top and top[token] == logprob
        assert len(top) in (3, 4)  # the 3 best, and the token itself when it is not among them
        best = sorted(top.values(), reverse=True)[:3]
        assert logprob <= best[0] < 0
        if len(top) == 3:  # the token is among the best: exactly the same number (lm-eval's greedy check)
            assert logprob in best


async def test_token_id_prompts_read_after_the_sentence_start(client: httpx.AsyncClient, checkpoints: Path) -> None:
    vocab = Vocab.load(checkpoints / "lstm" / "vocab.txt")
    ids = [vocab.stoi.get(w, vocab.unk) for w in SENTENCE.split()]
    text = (await completion(client, prompt=SENTENCE, max_tokens=0, echo=True, logprobs=1))["choices"][0]
    body = await completion(client, prompt=[[vocab.eos] + ids, ids], max_tokens=0, echo=True, logprobs=1)
    with_start, without = (c["logprobs"] for c in body["choices"])
    scores = ("tokens", "token_logprobs", "top_logprobs")
    assert [with_start[k] for k in scores] == [text["logprobs"][k] for k in scores]  # <eos> is the start itself
    assert body["choices"][0]["text"] == "The film was released in the United States."  # ids are detokenised
    assert with_start["text_offset"][-1] == len(body["choices"][0]["text"]) - 1
    assert without["tokens"] == text["logprobs"]["tokens"][1:] and without["token_logprobs"][0] is None
    assert without["token_logprobs"][1:] == text["logprobs"]["token_logprobs"][2:]
    one = await completion(client, prompt=[vocab.eos] + ids, max_tokens=0, echo=True, logprobs=1)
    assert one["choices"][0]["logprobs"]["token_logprobs"] == text["logprobs"]["token_logprobs"]


async def test_max_tokens_zero_without_echo_is_empty(client: httpx.AsyncClient) -> None:
    body = await completion(client, prompt="The film", max_tokens=0)
    assert body["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]


async def test_greedy_generation_matches_v1_generate(client: httpx.AsyncClient) -> None:
    body = await completion(client, prompt="The film", max_tokens=8, temperature=0, logprobs=2)
    r = await client.post("/v1/generate", json={"prompt": "The film", "max_tokens": 8, "temperature": 0})
    native = r.json()["choices"][0]
    choice = body["choices"][0]
    generated = [t for t in choice["logprobs"]["tokens"] if t != "<eos>"]
    assert generated == native["tokens"]
    assert choice["text"] == (" " + native["text"] if native["text"] else "")
    assert sum(choice["logprobs"]["token_logprobs"][:len(native["tokens"])]) == pytest.approx(native["logprob"],
                                                                                             abs=1e-4)
    for token, top in zip(choice["logprobs"]["tokens"], choice["logprobs"]["top_logprobs"]):
        assert token in top and len(top) <= 3
    assert body["usage"]["completion_tokens"] == len(choice["logprobs"]["tokens"])
    echoed = await completion(client, prompt="The film", max_tokens=8, temperature=0, echo=True)
    assert echoed["choices"][0]["text"] == "The film" + choice["text"]


async def test_n_seed_and_many_prompts(client: httpx.AsyncClient) -> None:
    body = await completion(client, prompt=["The film", "He was"], max_tokens=6, n=3, seed=11)
    assert [c["index"] for c in body["choices"]] == list(range(6))
    again = await completion(client, prompt=["The film", "He was"], max_tokens=6, n=3, seed=11)
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in body["choices"]]
    assert len({c["text"] for c in body["choices"]}) > 1


async def test_stop_strings(client: httpx.AsyncClient) -> None:
    free = await completion(client, prompt="The film", max_tokens=30, temperature=0)
    text = free["choices"][0]["text"]
    word = text.split()[2] if len(text.split()) > 2 else text.split()[-1]
    body = await completion(client, prompt="The film", max_tokens=30, temperature=0, stop=[word])
    choice = body["choices"][0]
    assert word not in choice["text"] and choice["finish_reason"] == "stop"
    assert text.startswith(choice["text"])


async def test_context_conditions_the_completion(client: httpx.AsyncClient) -> None:
    body = await completion(client, model="lstm", prompt=SENTENCE, max_tokens=0, echo=True, logprobs=0,
                            context="Valkyria Chronicles")
    assert body["context_used"] is True
    native = await scored_tokens(client, SENTENCE, model="lstm", context="Valkyria Chronicles")
    assert body["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx([t["logprob"] for t in native],
                                                                                   abs=1e-6)
    gru = await completion(client, model="gru", prompt="The film", max_tokens=2, context="Valkyria Chronicles")
    assert gru["context_used"] is False and gru["warnings"]


async def test_streaming_sends_the_same_text(client: httpx.AsyncClient) -> None:
    whole = await completion(client, prompt="The film", max_tokens=10, temperature=0, echo=True)
    async with client.stream("POST", "/v1/completions", json={
            "prompt": "The film", "max_tokens": 10, "temperature": 0, "echo": True, "stream": True, "logprobs": 1,
            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] async for line in r.aiter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    usage = chunks.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


async def test_concurrent_echo_requests_are_batched_like_scoring(client: httpx.AsyncClient) -> None:
    texts = ["The film was a success .", "He was born in London .", "It was released in 2005 .", SENTENCE]
    bodies = await asyncio.gather(*(completion(client, prompt=t, max_tokens=0, echo=True, logprobs=0) for t in texts))
    for text, body in zip(texts, bodies):
        native = await scored_tokens(client, text)
        assert body["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(
            [t["logprob"] for t in native], abs=1e-6)


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "x", "logit_bias": {"5": 100}}, "logit_bias"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "suffix": "the end"}, "suffix"),
    ({"prompt": [1, 10**9]}, "prompt"),
    ({"prompt": [[1, 2], [3, -1]]}, "prompt.1"),
    ({"prompt": ["a"] * 9}, "prompt"),
    ({"prompt": "x", "max_tokens": 65}, "max_tokens"),
    ({"prompt": "x", "n": 5}, "n"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
async def test_bad_input_gets_openai_error_body(client: httpx.AsyncClient, body: dict, param: str) -> None:
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == 400 and error["type"] == "invalid_request_error"
    assert error["message"]


async def test_unknown_model_and_malformed_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == 404 and r.json()["error"]["param"] == "model"
    r = await client.post("/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"


async def test_ignored_fields_and_neutral_values_are_accepted(client: httpx.AsyncClient) -> None:
    body = await completion(client, prompt="The film", max_tokens=2, temperature=0, user="someone",
                            presence_penalty=0, frequency_penalty=0.0, logit_bias={}, best_of=1, suffix=None,
                            some_future_field={"a": 1})
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


async def test_chat_completions_points_to_completions(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json={"model": "lstm", "messages": [{"role": "user",
                                                                                         "content": "hi"}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert "not chat models" in error["message"] and "/v1/completions" in error["message"]
    assert error["code"] == 400


async def test_models_in_openai_shape(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids == ["gru", "lstm"]
    for card in body["data"]:
        assert card["object"] == "model" and card["owned_by"] == "rnnlm-serve" and card["created"] > 0
        assert card["name"] == card["id"] and "arch" in card  # the project's own fields are kept
    assert next(c for c in body["data"] if c["id"] == "lstm")["aliases"] == ["default"]
    one = (await client.get("/v1/models/default")).json()
    assert one["id"] == "lstm" and one["object"] == "model"
