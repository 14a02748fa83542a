"""The page's files and the offline API docs over HTTP (no browser: tests/browser drives one)."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jsonschema
import pytest

from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app with no model loaded: the page and the docs do not need one."""
    app = create_app(Settings(checkpoints=tmp_path, jobs_db=str(tmp_path / "jobs.db")))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client


async def test_the_page_and_its_files(bare: httpx.AsyncClient) -> None:
    r = await bare.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    linked = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert set(linked) == {"/static/app.css", "/static/app.js", "/static/favicon.svg", "/docs", "/redoc"}
    for path, kind in (("/static/app.js", "text/javascript"), ("/static/app.css", "text/css"),
                       ("/static/favicon.svg", "image/svg+xml")):
        r = await bare.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and r.content
        assert "etag" in r.headers
    assert (await bare.head("/static/app.js")).status_code == 200


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/..%2Fapp.py", "/docs/assets/..%2F__init__.py",
                                  "/docs/assets/index.html"])
async def test_only_the_known_files_are_served(bare: httpx.AsyncClient, path: str) -> None:
    r = await bare.get(path)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found" and r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_load_their_assets_from_the_server(bare: httpx.AsyncClient, path: str) -> None:
    r = await bare.get(path)
    assert r.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", r.text)
    assert urls and all(u.startswith("/") for u in urls), urls
    assert "fonts.googleapis" not in r.text and "cdn." not in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for url in urls:
        assert (await bare.get(url)).status_code == 200, url


async def test_every_response_in_the_openapi_document_has_a_valid_example(bare: httpx.AsyncClient) -> None:
    spec = (await bare.get("/openapi.json")).json()
    components = spec["components"]
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                assert response.get("content"), f"{method} {path} {status}: no content"
                for media, content in response["content"].items():
                    schema = content.get("schema", {})
                    target = components["schemas"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
                    examples = ([content["example"]] if "example" in content else
                                [e["value"] for e in content.get("examples", {}).values()] or target.get("examples"))
                    assert examples, f"{method.upper()} {path} {status} {media}: no example"
                    if media == "application/json":
                        for example in examples:
                            jsonschema.validate(example, {**schema, "components": components})
                    checked += 1
    assert checked >= 20
