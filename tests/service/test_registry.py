"""ModelRegistry: aliases, hot reload, broken folders, removal, and the load-failure metric."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from service.errors import ModelNotFoundError
from service.registry import ModelRegistry
from service.settings import Settings

pytestmark = pytest.mark.anyio


def failures() -> float:
    return REGISTRY.get_sample_value("rnnlm_model_load_failures_total") or 0.0


def registry_for(root: Path, **kw) -> ModelRegistry:
    registry = ModelRegistry(Settings(checkpoints=root, reload_interval_s=0, **kw))
    registry.reload()
    return registry


def test_loads_valid_folders_only(checkpoints: Path) -> None:
    (checkpoints / ".lstm.tmp-abc").mkdir()                     # an atomic write in progress
    shutil.copytree(checkpoints / "gru", checkpoints / ".hidden")
    shutil.copytree(checkpoints / "gru", checkpoints / "Bad Name")  # not a valid model name
    (checkpoints / "empty").mkdir()                              # no config.json: not a model
    (checkpoints / "notes.txt").write_text("hi")
    assert registry_for(checkpoints).names() == ["gru", "lstm"]


def test_aliases(checkpoints: Path) -> None:
    registry = registry_for(checkpoints, aliases={"small": "gru", "ghost": "missing"})
    assert registry.get(None).name == "lstm"
    assert registry.get("default").name == "lstm"
    assert registry.get("small").name == "gru"
    assert registry.aliases_of("gru") == ["small"]
    with pytest.raises(ModelNotFoundError):
        registry.get("ghost")  # only "default" falls back to another model
    with pytest.raises(ModelNotFoundError):
        registry.get("nope")


def test_default_falls_back_when_its_model_is_missing(checkpoints: Path) -> None:
    shutil.rmtree(checkpoints / "lstm")
    registry = registry_for(checkpoints)
    assert registry.get(None).name == "gru"
    assert registry.aliases_of("gru") == ["default"]
    registry = registry_for(checkpoints, default_model="gru")
    assert registry.get("default").name == "gru"


def test_missing_checkpoint_dir_serves_nothing(tmp_path: Path) -> None:
    assert registry_for(tmp_path / "absent").names() == []


async def test_new_model_is_served_without_restart(app: FastAPI, client: httpx.AsyncClient,
                                                   checkpoints: Path) -> None:
    assert (await client.get("/v1/models/gru2")).status_code == 404
    shutil.copytree(checkpoints / "gru", checkpoints / "gru2")
    app.state.registry.reload()
    r = await client.post("/v1/score", json={"model": "gru2", "texts": ["The end ."]})
    assert r.status_code == 200 and r.json()["model"] == "gru2"


async def test_watcher_picks_up_changes(app: FastAPI, client: httpx.AsyncClient, checkpoints: Path) -> None:
    shutil.copytree(checkpoints / "lstm", checkpoints / "lstm-copy")
    for _ in range(100):  # the watcher polls every 0.2 s
        if "lstm-copy" in (await client.get("/ready")).json()["models"]:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the watcher did not load the new model")
    shutil.rmtree(checkpoints / "lstm-copy")
    for _ in range(100):
        if (await client.get("/v1/models/lstm-copy")).status_code == 404:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the watcher did not drop the removed model")


async def test_changed_model_is_reloaded(app: FastAPI, client: httpx.AsyncClient, checkpoints: Path) -> None:
    before = await client.post("/v1/score", json={"model": "lstm", "texts": ["The end ."]})
    shutil.rmtree(checkpoints / "lstm")
    shutil.copytree(checkpoints / "gru", checkpoints / "lstm")  # same name, different weights
    app.state.registry.reload()
    after = await client.post("/v1/score", json={"model": "lstm", "texts": ["The end ."]})
    assert (await client.get("/v1/models/lstm")).json()["arch"] == "gru"
    assert after.json()["results"][0]["logprob"] != before.json()["results"][0]["logprob"]


@pytest.mark.parametrize("broken_file, damage", [
    ("model.safetensors", b"this is not a safetensors file"),
    ("config.json", b'{"model": {"arch": "lstm", "vocab_size": 3'),
    ("config.json", b'{"model": {"arch": "transformer"}}'),
    ("vocab.txt", b"too\nfew\nwords\n"),
])
async def test_broken_model_keeps_the_old_version(app: FastAPI, client: httpx.AsyncClient, checkpoints: Path,
                                                  broken_file: str, damage: bytes) -> None:
    registry = app.state.registry
    registry.close()  # drive the scans by hand
    before = (await client.post("/v1/score", json={"model": "lstm", "texts": ["The end ."]})).json()
    count = failures()
    (checkpoints / "lstm" / broken_file).write_bytes(damage)
    registry.reload()
    assert failures() == count + 1
    registry.reload()
    assert failures() == count + 1  # an unchanged broken folder is reported once, not every poll
    after = await client.post("/v1/score", json={"model": "lstm", "texts": ["The end ."]})
    assert after.status_code == 200
    assert after.json() == before
    text = (await client.get("/metrics")).text
    assert f"rnnlm_model_load_failures_total {count + 1}" in text


async def test_broken_new_model_is_skipped(app: FastAPI, client: httpx.AsyncClient, checkpoints: Path) -> None:
    count = failures()
    shutil.copytree(checkpoints / "gru", checkpoints / "half")
    (checkpoints / "half" / "model.safetensors").write_bytes(b"\0" * 100)
    app.state.registry.reload()
    assert failures() >= count + 1
    assert (await client.get("/v1/models/half")).status_code == 404
    assert (await client.get("/ready")).json()["models"] == ["gru", "lstm"]
    # Fixed later (e.g. the copy finished): loaded on the next scan.
    shutil.copy(checkpoints / "gru" / "model.safetensors", checkpoints / "half" / "model.safetensors")
    app.state.registry.reload()
    assert (await client.get("/v1/models/half")).status_code == 200


def test_atomic_save_is_never_seen_half_done(checkpoints: Path) -> None:
    """While save_model swaps a folder (old renamed away, new not yet in place) the model stays served."""
    registry = registry_for(checkpoints)
    (checkpoints / "gru").rename(checkpoints / ".gru.old-1-2")
    (checkpoints / ".gru.tmp-xyz").mkdir()
    registry.reload()
    assert "gru" in registry.names()
    shutil.rmtree(checkpoints / ".gru.tmp-xyz")
    shutil.rmtree(checkpoints / ".gru.old-1-2")
    registry.reload()
    assert "gru" not in registry.names()
