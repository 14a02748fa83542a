"""A real `rnnlm serve --with-worker` on a free loopback port, serving a copy of the shipped models."""
from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("lstm", "gru", "student")
API_KEY = "client-test-key"


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, data_root: Path, proc_tools) -> Iterator[SimpleNamespace]:
    """The server's URL, API key, checkpoint folder and data root; the shipped models, copied (jobs add theirs)."""
    tmp = tmp_path_factory.mktemp("client-server")
    checkpoints = tmp / "checkpoints"
    checkpoints.mkdir()
    for name in SHIPPED:
        shutil.copytree(REPO / "checkpoints" / name, checkpoints / name)
    env = proc_tools.clean_env(OMP_NUM_THREADS="1", RNNLM_DATA_ROOTS=str(data_root), RNNLM_API_KEY=API_KEY,
                               RNNLM_RELOAD_INTERVAL_S="0.5", RNNLM_WORKER_POLL_INTERVAL_S="0.2")
    server = proc_tools.start_serve(checkpoints, tmp / "jobs.db", tmp / "serve.log", "--with-worker",
                                    "--log-level", "warning", env=env)
    try:
        yield SimpleNamespace(url=server.url, api_key=API_KEY, checkpoints=checkpoints, data_root=data_root,
                              log=server.log)
    finally:
        proc_tools.stop(server.proc, timeout_s=60)


@pytest.fixture(scope="session")
def run_async() -> Callable[[Coroutine], object]:
    """`run_async(coro)`: run a coroutine to its end on a fresh event loop in its own thread (another test's
    library, e.g. Playwright's sync API, may keep a loop running in this one)."""
    def run(coro: Coroutine) -> object:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()
    return run
