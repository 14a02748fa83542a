"""GET /v1/models and /v1/models/{name}."""
from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_list_models(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models")
    assert r.status_code == 200
    data = {m["name"]: m for m in r.json()["data"]}
    assert set(data) == {"lstm", "gru"}
    lstm, gru = data["lstm"], data["gru"]
    assert lstm["arch"] == "lstm" and gru["arch"] == "gru"
    assert lstm["aliases"] == ["default"] and gru["aliases"] == []
    assert lstm["context"] is True and gru["context"] is False
    for card in data.values():
        assert card["parameters"] > 0 and card["vocab_size"] > 100
        assert card["metrics"]["test_ppl"] > 1
        assert card["provenance"]["corpus"] == "wikitext-2"
        assert "path" not in card  # no server file system paths over HTTP


async def test_get_model_by_name_and_alias(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models/gru")
    assert r.status_code == 200 and r.json()["name"] == "gru"
    r = await client.get("/v1/models/default")
    assert r.status_code == 200 and r.json()["name"] == "lstm"


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models/transformer")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "model_not_found"
    assert r.json()["error"]["param"] == "name"
    assert "transformer" in r.json()["error"]["message"]
