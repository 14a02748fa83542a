"""The device setting in the service: models report their device, a missing GPU is a clear 503 and
/ready says why (not a crash), a job asking for a missing GPU fails with the reason."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch
from pydantic import ValidationError

from service.app import create_app
from service.jobs import JobStore
from service.settings import Settings
from service.worker import Worker

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            yield c


@pytest.fixture
async def cpu_client(checkpoints: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(Settings(checkpoints=checkpoints, reload_interval_s=0, device="cpu")):
        yield c


@pytest.fixture
async def cuda_client(checkpoints: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(Settings(checkpoints=checkpoints, reload_interval_s=0, device="cuda")):
        yield c


def test_the_setting_is_checked_by_name(monkeypatch, checkpoints):
    assert Settings(checkpoints=checkpoints).device == "auto"
    monkeypatch.setenv("RNNLM_DEVICE", "CUDA:1")
    assert Settings(checkpoints=checkpoints).device == "cuda:1"
    with pytest.raises(ValidationError, match="must be auto .*; got 'gpu'"):
        Settings(checkpoints=checkpoints, device="gpu")
    with pytest.raises(ValidationError):
        Settings(checkpoints=checkpoints, serve_dtype="float8")


@pytest.mark.anyio
async def test_models_ready_and_metrics_report_the_device(cpu_client):
    ready = await cpu_client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": ["gru", "lstm"], "device": "cpu"}
    cards = (await cpu_client.get("/v1/models")).json()["data"]
    assert {(c["name"], c["device"], c["compute_dtype"]) for c in cards} == {("gru", "cpu", "float32"),
                                                                             ("lstm", "cpu", "float32")}
    assert (await cpu_client.get("/v1/models/lstm")).json()["device"] == "cpu"
    metrics = (await cpu_client.get("/metrics")).text
    assert 'rnnlm_model_device_info{device="cpu",dtype="float32",model="lstm"} 1.0' in metrics
    assert 'rnnlm_model_device_info{device="cpu",dtype="float32",model="gru"} 1.0' in metrics
    scored = await cpu_client.post("/v1/score", json={"texts": ["The game was released ."]})
    assert scored.status_code == 200


@no_cuda
@pytest.mark.anyio
async def test_missing_cuda_is_a_503_and_ready_says_why(cuda_client):
    assert (await cuda_client.get("/health")).status_code == 200  # the process runs
    ready = await cuda_client.get("/ready")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready" and body["models"] == [] and "device" not in body
    assert "device 'cuda' is not available" in body["error"]
    for path, payload in (("/v1/score", {"texts": ["The game ."]}), ("/v1/next-word", {"text": "The game"}),
                          ("/v1/generate", {"prompt": "The", "max_tokens": 3})):
        response = await cuda_client.post(path, json=payload)
        assert response.status_code == 503, path
        error = response.json()["error"]
        assert error["type"] == "device_unavailable"
        assert error["message"].startswith("no model can be served: device 'cuda' is not available")
    assert (await cuda_client.get("/v1/models")).json()["data"] == []
    assert 'model="lstm"' not in (await cuda_client.get("/metrics")).text.split("rnnlm_model_device_info")[-1]


def test_serve_and_worker_refuse_a_device_name_they_do_not_know(checkpoints):
    for command in ("serve", "worker"):
        proc = subprocess.run([sys.executable, "-m", "service.cli", command, "--checkpoints", str(checkpoints),
                               "--device", "gpu"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert "argument --device: must be auto (CUDA when available), cpu, cuda or cuda:N; got 'gpu'" in proc.stderr


# ---- jobs ---------------------------------------------------------------------------------------------
@pytest.fixture
def store(job_settings: Settings) -> JobStore:
    return JobStore(job_settings.jobs_db, stale_after_s=30)


@no_cuda
@pytest.mark.parametrize("job_device, worker_device", [("cuda", "auto"), ("auto", "cuda:0"), ("cuda:1", "cpu")])
def test_a_job_on_a_missing_gpu_fails_with_the_reason(store, job_settings, tiny_job, job_device, worker_device):
    worker = Worker(store, job_settings.checkpoints, poll_interval_s=0.05, worker_id="w1", device=worker_device)
    job = store.submit("train", "on-gpu", tiny_job(device=job_device))
    assert worker.run(once=True) == 1
    done = store.get(job.id)
    assert done.status == "failed"
    expected = job_device if job_device != "auto" else worker_device
    assert f"device '{expected}' is not available" in done.error
    assert not (job_settings.checkpoints / "on-gpu").exists()


def test_a_job_on_the_cpu_trains_there_and_says_so(store, job_settings, tiny_job):
    worker = Worker(store, job_settings.checkpoints, poll_interval_s=0.05, worker_id="w1", device="cpu")
    job = store.submit("train", "on-cpu", tiny_job(epochs=1, amp="bf16"))
    worker.run(once=True)
    assert store.get(job.id).status == "succeeded", store.get(job.id).error
    from models.checkpoint import read_config
    prov = read_config(job_settings.checkpoints / "on-cpu")["provenance"]
    assert prov["device"] == "cpu"
    assert prov["train_config"]["device"] == "cpu" and prov["train_config"]["amp"] == "bf16"


@pytest.mark.anyio
async def test_job_body_device_is_checked(job_settings, tiny_job):
    async for c in _client(job_settings):
        bad = await c.post("/v1/jobs", json={"type": "train", "name": "x", **tiny_job(device="tpu")})
        assert bad.status_code == 422
        assert bad.json()["error"]["param"] == "device"
        bad = await c.post("/v1/jobs", json={"type": "train", "name": "x", **tiny_job(amp="fp8")})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "amp"
