"""Bad input: always a 4xx with {"error": {"type", "message", "param"}}, never a 500, and the server goes on."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from models.dataset import DatasetExists, DatasetNotFound
from models.device import DeviceError
from models.errors import CheckpointError, InputError
from models.versions import PromotionRefused, VersionError, VersionNotFound
from service import errors
from service.app import create_app
from service.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ModelNotFoundError,
    PermissionDeniedError,
    QueueFullError,
)
from service.jobs import IdempotencyKeyReused, JobConflict, JobNotFound, JobStoreUnavailable
from service.settings import Settings

pytestmark = pytest.mark.anyio

# The `settings` fixture sets max_texts=8, max_text_chars=200, max_k=50, max_tokens=64, max_n=4.
LONG = "word " * 41  # 205 characters

BAD = [
    # (path, body, status, param)
    ("/v1/score", {}, 422, "texts"),
    ("/v1/score", {"texts": "not a list"}, 422, "texts"),
    ("/v1/score", {"texts": [1, 2]}, 422, "texts.0"),
    ("/v1/score", {"texts": []}, 422, "texts"),
    ("/v1/score", {"texts": [""]}, 422, "texts.0"),
    ("/v1/score", {"texts": ["fine", "  \n\t "]}, 422, "texts.1"),
    ("/v1/score", {"texts": ["fine", LONG]}, 422, "texts.1"),
    ("/v1/score", {"texts": ["a"] * 9}, 422, "texts"),
    ("/v1/score", {"texts": ["a"], "add_eos": "maybe"}, 422, "add_eos"),
    ("/v1/score", {"texts": ["a"], "context": LONG}, 422, "context"),
    ("/v1/score", {"texts": ["a"], "temperature": 1}, 422, "temperature"),  # unknown field
    ("/v1/score", {"texts": ["a"], "model": 5}, 422, "model"),
    ("/v1/perplexity", {"texts": []}, 422, "texts"),
    ("/v1/perplexity", {"texts": [" "]}, 422, "texts.0"),
    ("/v1/perplexity", {"texts": ["a"] * 9}, 422, "texts"),
    ("/v1/rank", {"candidates": []}, 422, "candidates"),
    ("/v1/rank", {"candidates": ["a", ""]}, 422, "candidates.1"),
    ("/v1/rank", {"candidates": ["a", LONG]}, 422, "candidates.1"),
    ("/v1/rank", {"texts": ["a"]}, 422, "candidates"),
    ("/v1/next-word", {}, 422, "text"),
    ("/v1/next-word", {"text": None}, 422, "text"),
    ("/v1/next-word", {"text": "a", "k": 0}, 422, "k"),
    ("/v1/next-word", {"text": "a", "k": -3}, 422, "k"),
    ("/v1/next-word", {"text": "a", "k": 51}, 422, "k"),
    ("/v1/next-word", {"text": "a", "k": "five"}, 422, "k"),
    ("/v1/next-word", {"text": LONG}, 422, "text"),
    ("/v1/generate", {"temperature": -0.1}, 422, "temperature"),
    ("/v1/generate", {"top_p": 0}, 422, "top_p"),
    ("/v1/generate", {"top_p": 1.01}, 422, "top_p"),
    ("/v1/generate", {"top_k": -1}, 422, "top_k"),
    ("/v1/generate", {"max_tokens": 0}, 422, "max_tokens"),
    ("/v1/generate", {"max_tokens": 65}, 422, "max_tokens"),
    ("/v1/generate", {"n": 0}, 422, "n"),
    ("/v1/generate", {"n": 5}, 422, "n"),
    ("/v1/generate", {"seed": -1}, 422, "seed"),
    ("/v1/generate", {"seed": 2**70}, 422, "seed"),
    ("/v1/generate", {"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    ("/v1/generate", {"stop": [""]}, 422, "stop.0"),
    ("/v1/generate", {"prompt": LONG}, 422, "prompt"),
    ("/v1/generate", {"prompt": 3}, 422, "prompt"),
    ("/v1/generate", {"stream": "yes please"}, 422, "stream"),
]


def assert_error(r: httpx.Response, status: int, param: str | None = None, type_: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"type", "message", "param"}
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if type_ is not None:
        assert error["type"] == type_
    return error


@pytest.mark.parametrize("path, body, status, param", BAD)
async def test_bad_input(client: httpx.AsyncClient, path: str, body: dict, status: int, param: str) -> None:
    assert_error(await client.post(path, json=body), status, param)


async def test_nan_and_infinity_are_rejected(client: httpx.AsyncClient) -> None:
    for value in ("NaN", "Infinity"):
        r = await client.post("/v1/generate", content=f'{{"temperature": {value}}}',
                              headers={"content-type": "application/json"})
        assert_error(r, 422, "temperature")


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2", b'{"texts": ["a"]'])
async def test_malformed_json(client: httpx.AsyncClient, content: bytes) -> None:
    r = await client.post("/v1/score", content=content, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)
    assert_error(r, r.status_code)


async def test_body_that_is_not_an_object(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/v1/score", json=["a"]), 422)
    assert_error(await client.post("/v1/score", content=b"texts=a",
                                   headers={"content-type": "application/x-www-form-urlencoded"}), 422)


@pytest.mark.parametrize("path, body", [
    ("/v1/score", {"model": "nope", "texts": ["a"]}),
    ("/v1/perplexity", {"model": "nope", "texts": ["a"]}),
    ("/v1/rank", {"model": "nope", "candidates": ["a"]}),
    ("/v1/next-word", {"model": "nope", "text": "a"}),
    ("/v1/generate", {"model": "nope"}),
    ("/v1/generate", {"model": "nope", "stream": True}),
])
async def test_unknown_model(client: httpx.AsyncClient, path: str, body: dict) -> None:
    error = assert_error(await client.post(path, json=body), 404, "model", "model_not_found")
    assert "nope" in error["message"]


async def test_body_over_the_size_limit(app: FastAPI, client: httpx.AsyncClient) -> None:
    limit = app.state.settings.max_body_bytes
    r = await client.post("/v1/score", json={"texts": ["a" * (limit + 1)]})
    assert_error(r, 413, type_="request_too_large")

    async def chunks():  # no Content-Length: counted as it arrives
        for _ in range(limit // 1000 + 2):
            yield b" " * 1000

    r = await client.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, type_="request_too_large")


async def test_not_found_and_wrong_method_use_the_error_shape(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/nothing"), 404, type_="not_found")
    assert_error(await client.get("/v1/score"), 405, type_="method_not_allowed")
    assert_error(await client.delete("/v1/models/lstm"), 405)


async def test_engine_input_error_is_422(app: FastAPI, client: httpx.AsyncClient,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise InputError("text 1 has no tokens", "texts.1")

    monkeypatch.setattr(app.state.registry.get("gru"), "score", refuse)
    r = await client.post("/v1/score", json={"model": "gru", "texts": ["hello", "!!!"], "add_eos": False})
    error = assert_error(r, 422, "texts.1", "invalid_request_error")
    assert error["message"] == "text 1 has no tokens"


async def test_server_keeps_serving_after_errors(client: httpx.AsyncClient) -> None:
    for path, body, status, _ in BAD[:10]:
        assert (await client.post(path, json=body)).status_code == status
    r = await client.post("/v1/score", json={"texts": ["The end ."]})
    assert r.status_code == 200
    assert (await client.get("/health")).status_code == 200


# ---- the one table of domain exceptions ---------------------------------------------------------
DOMAIN = [
    # (exception, status, type, param, message fragment, headers)
    (BadRequestError("jobs are disabled", "data"), 400, "invalid_request_error", "data", "disabled", {}),
    (AuthenticationError("this route needs an API key"), 401, "authentication_error", None, "API key",
     {"www-authenticate": "Bearer"}),
    (PermissionDeniedError("wrong API key"), 403, "permission_error", None, "wrong", {}),
    (ModelNotFoundError("ghost"), 404, "model_not_found", "model", "ghost", {}),
    (JobNotFound("abc123"), 404, "job_not_found", "id", "abc123", {}),
    (ConflictError("name: taken", "name"), 409, "conflict", "name", "taken", {}),
    (JobConflict("job abc has already succeeded"), 409, "conflict", None, "already succeeded", {}),
    (InputError("k must be at least 1", "k"), 422, "invalid_request_error", "k", "at least 1", {}),
    (QueueFullError("lstm", 256, retry_after_s=2), 503, "overloaded", None, "overloaded", {"retry-after": "2"}),
    (CheckpointError("weights.pt is truncated"), 503, "model_unavailable", None, "truncated", {}),
    (DeviceError("device 'cuda' is not available: no CUDA GPU is visible"), 503, "device_unavailable", None,
     "not available", {}),
    (JobStoreUnavailable("the job store postgresql://db/jobs cannot be reached: connection refused"), 503,
     "job_store_unavailable", None, "cannot be reached", {}),
    (VersionNotFound("model 'lstm' has no version 9"), 404, "version_not_found", "version", "no version 9", {}),
    (PromotionRefused("lstm", 2, "validation perplexity 3737.40 is worse than version 1's 120.91"), 409,
     "promotion_refused", None, "3737.40 is worse", {}),
    (VersionError("no earlier version to roll back to"), 409, "conflict", None, "roll back", {}),
    (IdempotencyKeyReused("k-1", "abc123"), 422, "idempotency_key_reused", "Idempotency-Key", "abc123", {}),
    (DatasetNotFound("no dataset named 'mine'"), 404, "dataset_not_found", "name", "mine", {}),
    (DatasetExists("dataset 'mine' already exists"), 409, "conflict", "name", "already exists", {}),
]


@pytest.fixture
async def raising_client() -> AsyncIterator[httpx.AsyncClient]:
    """A bare app with the service's handlers whose one route raises the exception it is given."""
    app = FastAPI()
    errors.install(app)
    raised: list[Exception] = []

    @app.get("/raise")
    async def raise_it() -> None:
        raise raised[0]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        c.raised = raised
        yield c


@pytest.mark.parametrize("exc, status, type_, param, fragment, headers", DOMAIN,
                         ids=[type(row[0]).__name__ for row in DOMAIN])
async def test_each_domain_exception_maps_to_its_status(raising_client: httpx.AsyncClient, exc: Exception,
                                                        status: int, type_: str, param: str | None,
                                                        fragment: str, headers: dict[str, str]) -> None:
    raising_client.raised.append(exc)
    r = await raising_client.get("/raise")
    error = assert_error(r, status, type_=type_)
    assert error["param"] == param and fragment in error["message"]
    assert {k: r.headers.get(k) for k in headers} == headers


def test_every_domain_exception_is_in_the_table() -> None:
    assert {type(row[0]) for row in DOMAIN} == set(errors.DOMAIN_ERRORS)


async def test_a_subclass_maps_like_its_parent(raising_client: httpx.AsyncClient) -> None:
    class TooFewWords(InputError):
        pass

    raising_client.raised.append(TooFewWords("text 0 has no tokens", "texts.0"))
    assert_error(await raising_client.get("/raise"), 422, "texts.0", "invalid_request_error")


async def test_api_key_errors_come_from_the_table(settings: Settings, tmp_path: Path) -> None:
    keyed = settings.model_copy(update={"api_key": SecretStr("s3cret"), "jobs_db": tmp_path / "jobs.db"})
    app = create_app(keyed)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        r = await client.get("/v1/jobs")
        assert_error(r, 401, type_="authentication_error")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(await client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}), 403,
                     type_="permission_error")
        assert (await client.get("/v1/jobs", headers={"Authorization": "Bearer s3cret"})).status_code == 200
        assert_error(await client.get("/v1/jobs/abc", headers={"Authorization": "Bearer s3cret"}), 404, "id",
                     "job_not_found")
