"""What a deployment expects of the API: request ids, CORS, the API key as an OpenAPI security scheme,
and the key on the inference routes when asked."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from service.app import create_app
from service.request_id import HEADER
from service.settings import Settings

pytestmark = pytest.mark.anyio
KEY = "s3cret-key"
REPO = Path(__file__).resolve().parents[2]


async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            yield c


@pytest.fixture
async def keyed(checkpoints: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """API key required on the inference routes too; CORS for one origin."""
    settings = Settings(checkpoints=checkpoints, reload_interval_s=0, jobs_db=tmp_path / "jobs.db", api_key=KEY,
                        api_key_inference=True, cors_origins="https://app.example, https://other.example")
    async for c in serve(settings):
        yield c


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    r = await client.get("/health", headers={HEADER: "req-42.abc"})
    assert r.headers[HEADER] == "req-42.abc"
    generated = (await client.get("/health")).headers[HEADER]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert (await client.get("/health")).headers[HEADER] != generated
    forged = await client.get("/health", headers={HEADER: "x] fake log line"})
    assert forged.headers[HEADER] != "x] fake log line" and len(forged.headers[HEADER]) == 32
    error = await client.post("/v1/score", json={"texts": []}, headers={HEADER: "bad-1"})
    assert error.status_code == 422 and error.headers[HEADER] == "bad-1"


def test_log_lines_carry_the_request_id() -> None:
    """The server's logging setup, applied in a fresh process: app and access lines show the request id."""
    script = """
import logging, logging.config
from asgi_correlation_id import correlation_id
from service.request_id import log_config
logging.config.dictConfig(log_config("info"))
log = logging.getLogger("service.app")
log.info("outside")
token = correlation_id.set("req-77")
log.info("inside")
logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/health", "1.1", 200)
correlation_id.reset(token)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    app_lines = done.stderr.splitlines()
    assert "INFO [-] service.app: outside" in app_lines[0]
    assert "INFO [req-77] service.app: inside" in app_lines[1]
    assert '[req-77] 127.0.0.1:5000 - "GET /health HTTP/1.1" 200' in done.stdout


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    r = await client.get("/health", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in r.headers
    preflight = await client.options("/v1/score", headers={"Origin": "https://app.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_the_configured_origins(keyed: httpx.AsyncClient) -> None:
    preflight = await keyed.options("/v1/score", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    r = await keyed.get("/health", headers={"Origin": "https://other.example"})
    assert r.headers["access-control-allow-origin"] == "https://other.example"
    assert HEADER.lower() in r.headers["access-control-expose-headers"].lower()
    stranger = await keyed.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in stranger.headers


async def test_api_key_is_an_openapi_security_scheme(client: httpx.AsyncClient, keyed: httpx.AsyncClient) -> None:
    """The key is an HTTP bearer scheme (the Authorize button of /docs), on the routes that need it."""
    spec = (await keyed.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["APIKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert spec["paths"]["/v1/jobs"]["post"]["security"] == [{"APIKey": []}]
    assert spec["paths"]["/v1/score"]["post"]["security"] == [{"APIKey": []}]
    assert spec["paths"]["/v1/completions"]["post"]["security"] == [{"APIKey": []}]
    assert "security" not in spec["paths"]["/health"]["get"]
    open_spec = (await client.get("/openapi.json")).json()  # no key configured: nothing asks for one
    assert "security" not in open_spec["paths"]["/v1/score"]["post"]


async def test_inference_routes_are_open_without_the_setting(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/score", json={"texts": ["The film ."]})
    assert r.status_code == 200


@pytest.mark.parametrize("path, body", [("/v1/score", {"texts": ["The film ."]}),
                                        ("/v1/next-word", {"text": "The "}),
                                        ("/v1/generate", {"prompt": "The", "max_tokens": 2})])
async def test_inference_routes_need_the_key_when_set(keyed: httpx.AsyncClient, path: str, body: dict) -> None:
    missing = await keyed.post(path, json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "authentication_error"
    basic = await keyed.post(path, json=body, headers={"Authorization": "Basic " + KEY})
    assert basic.status_code == 401
    wrong = await keyed.post(path, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["type"] == "permission_error"
    ok = await keyed.post(path, json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200, ok.text
    assert (await keyed.get("/health")).status_code == 200 and (await keyed.get("/v1/models")).status_code == 200


async def test_completions_answer_a_missing_key_in_openai_shape(keyed: httpx.AsyncClient) -> None:
    r = await keyed.post("/v1/completions", json={"prompt": "The", "max_tokens": 1})
    assert r.status_code == 401 and r.json()["error"]["code"] == 401
    ok = await keyed.post("/v1/completions", json={"prompt": "The", "max_tokens": 1},
                          headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_inference_key_setting_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="api_key_inference needs an api_key"):
        Settings(checkpoints=tmp_path, api_key_inference=True)
    assert Settings(checkpoints=tmp_path, cors_origins="https://a.example,, https://b.example ").cors_origins == [
        "https://a.example", "https://b.example"]
