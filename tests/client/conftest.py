"""A real `rnnlm serve --with-worker` on a free loopback port, serving a copy of the shipped models."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
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
    port, log = proc_tools.free_port(), tmp / "serve.log"
    env = proc_tools.clean_env(OMP_NUM_THREADS="1", RNNLM_DATA_ROOTS=str(data_root), RNNLM_API_KEY=API_KEY,
                               RNNLM_RELOAD_INTERVAL_S="0.5", RNNLM_WORKER_POLL_INTERVAL_S="0.2")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--checkpoints",
                                 str(checkpoints), "--jobs-db", str(tmp / "jobs.db"), "--with-worker",
                                 "--threads", "1", "--log-level", "warning"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        proc_tools.wait_ready(f"{url}/ready", proc, log, "rnnlm serve", timeout_s=180)
        yield SimpleNamespace(url=url, api_key=API_KEY, checkpoints=checkpoints, data_root=data_root, log=log)
    finally:
        proc_tools.stop(proc, timeout_s=60)


@pytest.fixture(scope="session")
def run_async() -> Callable[[Coroutine], object]:
    """`run_async(coro)`: run a coroutine to its end on a fresh event loop in its own thread (another test's
    library, e.g. Playwright's sync API, may keep a loop running in this one)."""
    def run(coro: Coroutine) -> object:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()
    return run
