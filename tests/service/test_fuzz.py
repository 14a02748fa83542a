"""Inputs found by fuzzing: lone surrogates, 0/1 as booleans, methods a path does not serve, and an
OpenAPI document that says what the server does."""
from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio

LONE = b'"a \\ud800 b \\udfff"'  # JSON escapes of two lone surrogates (no UTF-8 text can hold one)
CLEANED = "a \ufffd b \ufffd"


async def post_raw(client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
    return await client.post(path, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize("path, template", [
    ("/v1/score", b'{"texts": [%s], "details": true}'),
    ("/v1/score", b'{"texts": ["fine"], "context": %s}'),
    ("/v1/perplexity", b'{"texts": [%s, "fine"]}'),
    ("/v1/rank", b'{"candidates": [%s, "fine"]}'),
    ("/v1/next-word", b'{"text": %s}'),
    ("/v1/generate", b'{"prompt": %s, "max_tokens": 2, "seed": 1, "stop": [%s]}'),
    ("/v1/completions", b'{"model": "lstm", "prompt": %s, "max_tokens": 1, "echo": true}'),
])
async def test_lone_surrogates_are_replaced_in_every_text_field(client, path, template):
    r = await post_raw(client, path, template.replace(b"%s", LONE))
    assert r.status_code == 200, r.text
    assert "\\ud800" not in r.text
    if path in ("/v1/score", "/v1/perplexity", "/v1/rank") and b"context" not in template:
        assert CLEANED in [result["text"] for result in r.json()["results"]]
    if path == "/v1/completions":
        assert r.json()["choices"][0]["text"].startswith(CLEANED)


async def test_lone_surrogate_in_a_key_or_a_model_name_is_a_clear_4xx(client):
    r = await post_raw(client, "/v1/score", b'{"texts": ["a"], %s: 1}' % LONE)
    assert r.status_code == 422 and r.json()["error"]["param"] == CLEANED
    r = await post_raw(client, "/v1/score", b'{"texts": ["a"], "model": %s}' % LONE)
    assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_found"


async def test_escaped_backslash_and_surrogate_pairs_are_untouched(client):
    r = await post_raw(client, "/v1/score", b'{"texts": ["a \\\\ud800 b", "smile \\ud83d\\ude00"]}')
    assert r.status_code == 200, r.text
    assert [x["text"] for x in r.json()["results"]] == ["a \\ud800 b", "smile \U0001F600"]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/score", {"texts": ["a"], "details": 0}, "details"),
    ("/v1/score", {"texts": ["a"], "add_eos": 1}, "add_eos"),
    ("/v1/generate", {"prompt": "a", "stream": 0}, "stream"),
    ("/v1/next-word", {"text": "a", "k": "3"}, "k"),
    ("/v1/next-word", {"text": "a", "k": 3.0}, "k"),
])
async def test_values_are_strict(client, path, body, param):
    r = await client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


async def test_405_names_every_allowed_method(client):
    r = await client.options("/v1/jobs")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"
    assert r.json()["error"] == {"type": "method_not_allowed", "param": None,
                                 "message": "OPTIONS is not allowed on /v1/jobs; allowed: GET, POST"}
    r = await client.put("/v1/score")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


async def test_openapi_describes_validation_and_errors(client):
    schema = (await client.get("/openapi.json")).json()
    texts = schema["components"]["schemas"]["ScoreRequest"]["properties"]["texts"]["items"]
    assert texts["minLength"] == 1 and texts["pattern"] == r"\S"
    candidates = schema["components"]["schemas"]["RankRequest"]["properties"]["candidates"]["items"]
    assert candidates["minLength"] == 1
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                responses = operation["responses"]
                assert "400" in responses or "4XX" in responses, (method, path)
    r = await post_raw(client, "/v1/next-word", b'{"text": ')
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"


@pytest.mark.parametrize("path, body", [
    ("/v1/generate", {"prompt": "The", "temperature": 3.6e-55, "max_tokens": 3, "seed": 0}),
    ("/v1/completions", {"model": "lstm", "prompt": "The", "temperature": 1e-300, "max_tokens": 3, "seed": 0}),
    ("/v1/generate", {"prompt": "The", "top_p": 5e-324, "max_tokens": 3, "seed": 0}),
    ("/v1/completions", {"model": "lstm", "prompt": "The", "top_p": 5e-324, "max_tokens": 3, "seed": 0}),
])
async def test_a_tiny_temperature_or_top_p_samples_the_most_probable_token(client, path, body):
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    greedy = await client.post(path, json={**body, "temperature": 0, "top_p": 1})
    assert r.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


async def test_openapi_documents_the_stream_as_events_and_overload_as_503(client):
    schema = (await client.get("/openapi.json")).json()
    for path in ("/v1/generate", "/v1/completions"):
        responses = schema["paths"][path]["post"]["responses"]
        event = responses["200"]["content"]["text/event-stream"]["schema"]
        chunk, done = event["properties"]["data"]["anyOf"]
        assert chunk["contentMediaType"] == "application/json" and done == {"const": "[DONE]"}
        assert "$defs" not in str(event)  # every reference resolves within the document
        assert "503" in responses
    assert "security" not in schema["paths"]["/v1/jobs"]["post"]  # this server has no key: nothing asks for one


@pytest.mark.parametrize("field, value", [("stream", 0), ("echo", 1), ("seed", False), ("max_tokens", "3")])
async def test_completions_values_are_strict_too(client, field, value):
    r = await client.post("/v1/completions", json={"model": "lstm", "prompt": "The", "max_tokens": 1, field: value})
    assert r.status_code == 400, r.text  # OpenAI's status for a bad request
    assert r.json()["error"]["param"] == field
