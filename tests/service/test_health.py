"""Liveness, readiness, metrics exposition and the OpenAPI docs."""
from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.device import resolve_device
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.anyio


def samples(text: str, name: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


async def test_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_ready_lists_models(client: httpx.AsyncClient) -> None:
    r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "models": ["gru", "lstm"], "device": str(resolve_device("auto"))}


async def test_not_ready_without_models(tmp_path) -> None:
    app = create_app(Settings(checkpoints=tmp_path, reload_interval_s=0))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            r = await c.get("/ready")
            assert r.status_code == 503
            assert r.json()["models"] == []
            assert (await c.get("/health")).status_code == 200
            r = await c.post("/v1/score", json={"texts": ["hello"]})
            assert r.status_code == 404
            assert r.json()["error"]["type"] == "model_not_found"


async def test_metrics_count_requests(client: httpx.AsyncClient) -> None:
    def count(text: str, **labels: str) -> float:
        return sum(s.value for s in samples(text, "rnnlm_requests_total")
                   if all(s.labels.get(k) == v for k, v in labels.items()))

    before = (await client.get("/metrics")).text
    for _ in range(3):
        assert (await client.post("/v1/score", json={"model": "gru", "texts": ["the game"]})).status_code == 200
    assert (await client.post("/v1/score", json={"model": "gru", "texts": []})).status_code == 422
    assert (await client.get("/v1/models/nope")).status_code == 404
    assert (await client.get("/no/such/path")).status_code == 404
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    after = r.text

    def delta(**labels: str) -> float:
        return count(after, **labels) - count(before, **labels)

    assert delta(endpoint="/v1/score", model="gru", status="200") == 3
    assert delta(endpoint="/v1/score", model="none", status="422") == 1
    assert delta(endpoint="/v1/models/{name}", model="none", status="404") == 1  # route template, not the path
    assert delta(endpoint="unmatched", status="404") == 1
    assert not any("/no/such/path" in s.labels.get("endpoint", "") for s in samples(after, "rnnlm_requests_total"))
    scored = [s.value for s in samples(after, "rnnlm_tokens_scored_total") if s.labels["model"] == "gru"]
    assert scored and scored[0] >= 9  # "the game <eos>" three times
    assert [s.value for s in samples(after, "rnnlm_models_loaded")] == [2]
    hist = [s for s in samples(after, "rnnlm_request_duration_seconds_count")
            if s.labels == {"endpoint": "/v1/score", "model": "gru"}]
    assert hist and hist[0].value >= 3
    assert samples(after, "rnnlm_model_load_failures_total")
    assert samples(after, "rnnlm_requests_in_flight")


async def test_openapi_has_an_example_for_every_request(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    posts = {path: ops["post"] for path, ops in spec["paths"].items() if "post" in ops}
    assert set(posts) >= {"/v1/score", "/v1/perplexity", "/v1/next-word", "/v1/generate", "/v1/rank"}
    for path, op in posts.items():
        if "requestBody" not in op:  # e.g. POST /v1/jobs/{id}/cancel takes no body
            continue
        for media, content in op["requestBody"]["content"].items():
            if media == "application/json":
                ref = content["schema"]["$ref"].split("/")[-1]
                assert spec["components"]["schemas"][ref].get("examples"), f"{path} has no request example"
            elif media != "multipart/form-data":  # a form's example is the files it names
                assert "example" in content or "examples" in content, f"{path} {media} has no request example"
    assert (await client.get("/docs")).status_code == 200
