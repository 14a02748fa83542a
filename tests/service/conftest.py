"""Service fixtures: two tiny models trained once by the real trainer, and apps that serve them.

`wikitext2` (the corpus folder, skipped when absent) comes from tests/conftest.py.
"""
from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings

# ~10 s per model on one core; small batches and no dropout so that it learns word order in 2 epochs.
TINY = dict(emb=32, hidden=48, layers=1, epochs=2, train_tokens=60000, valid_tokens=5000, batch_size=16,
            lr=5e-3, dropout=0.0, max_vocab=5000, seed=1)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, wikitext2: Path) -> Path:
    """A folder holding `lstm` (with context) and `gru` (without), trained once per session."""
    from models.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    for name, arch, context in (("lstm", "lstm", True), ("gru", "gru", False)):
        train(TrainConfig(data=str(wikitext2), out=str(root / name), arch=arch, context=context,
                          run_dir=str(root / f"run-{name}"), **TINY), progress=False)
        shutil.rmtree(root / f"run-{name}")
    return root


@pytest.fixture
def checkpoints(tmp_path: Path, trained: Path) -> Path:
    """A fresh checkpoint dir per test, so tests that add or break models stay independent."""
    out = tmp_path / "checkpoints"
    out.mkdir()
    for name in ("lstm", "gru"):
        shutil.copytree(trained / name, out / name)
    return out


@pytest.fixture
def settings(checkpoints: Path) -> Settings:
    return Settings(checkpoints=checkpoints, reload_interval_s=0.2, max_texts=8, max_text_chars=200, max_k=50,
                    max_tokens=64, max_n=4)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with its lifespan entered (models loaded, watcher running)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


# ---- training jobs (test_jobs_api.py, test_worker.py): a tiny corpus and a tiny teacher -------------
JOB_TINY = dict(emb=16, hidden=16, layers=1, epochs=2, max_vocab=500, train_tokens=5000, valid_tokens=2000,
                batch_size=16, bptt=20, dropout=0.0, seed=1)


@pytest.fixture(scope="session")
def job_teacher(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """A model folder `teacher` trained for one tiny epoch (about a second)."""
    from models.train import TrainConfig, train

    root = tmp_path_factory.mktemp("job-teacher")
    train(TrainConfig(data=str(data_root / "wt2-400"), out=str(root / "teacher"), run_dir=str(root / "run"),
                      **{**JOB_TINY, "epochs": 1}), progress=False)
    return root / "teacher"


@pytest.fixture
def job_settings(tmp_path: Path, data_root: Path, job_teacher: Path) -> Settings:
    """Settings for jobs: a checkpoint dir holding `teacher`, a fresh job database, the tiny data root."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    shutil.copytree(job_teacher, checkpoints / "teacher")
    return Settings(checkpoints=checkpoints, jobs_db=tmp_path / "jobs" / "jobs.db", data_roots=[data_root],
                    reload_interval_s=0.2, default_model="teacher")


@pytest.fixture
def tiny_job(data_root: Path):
    """Job parameters (CLI flag names) for a tiny run on the data root's corpus, with overrides."""
    def params(**overrides) -> dict:
        return {"data": str(data_root / "wt2-400"), **JOB_TINY, **overrides}
    return params


@pytest.fixture
def job_worker():
    """`job_worker(settings, **options)` -> an in-process Worker on the settings' job store, checkpoints and
    data roots, polling every 50 ms (run it with `.run(once=True)` or in a thread)."""
    from service.jobs import JobStore
    from service.worker import Worker

    def make(settings: Settings, **options) -> Worker:
        return Worker(JobStore(settings.jobs_db), settings.checkpoints, poll_interval_s=0.05,
                      data_roots=settings.job_data_roots, **options)
    return make


# ---- the error shape -------------------------------------------------------------------------------
def _assert_error(response: httpx.Response, status: int, param: str | None = None, type_: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if type_ is not None:
        assert error["type"] == type_, error
    return error


@pytest.fixture(scope="session")
def assert_error():
    """`assert_error(response, status, param=None, type_=None)` -> the response's error object, once its
    status and its shape {"type", "message", "param"} (and the param and type, when given) are checked."""
    return _assert_error
