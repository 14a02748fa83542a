"""What the real-process tests share: the `rnnlm` command line, a `rnnlm serve` on a free loopback port,
the live children of a process, and raw bytes sent to a server.

`proc_tools` (free_port, clean_env, wait_for, wait_ready, stop) and `tiny_model` come from tests/conftest.py.
"""
from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]


def rnnlm(*args: str) -> list[str]:
    """The command line of `rnnlm ARGS` with this interpreter."""
    return [sys.executable, "-m", "service.cli", *args]


def read_until_closed(port: int, payload: bytes, give_up_s: float = 30.0) -> bytes:
    """Send raw `payload` to 127.0.0.1:`port` on a fresh connection and read until the server closes it;
    fail the test if it never does."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(give_up_s)
        sock.sendall(payload)
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for {give_up_s:.0f} s; got {data!r}")
        return data


def live_children(pid: int) -> list[int]:
    """Child processes of `pid` that are alive (not zombies), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="session")
def serve(proc_tools) -> Callable[..., AbstractContextManager]:
    """`with serve(folder, *args, model=None, env=None, wait="/ready", stop_timeout_s=30) as server:` runs
    `rnnlm serve` on a free loopback port with `folder/checkpoints` (holding a copy of `model` as `lstm`,
    when given) and `folder/jobs.db`, its output in `folder/serve.log`; `env` are the only RNNLM_* settings
    it gets. Waits until GET `wait` answers 200, and stops it (SIGTERM) on the way out."""

    @contextmanager
    def start(folder: Path, *args: str, model: Path | None = None, env: dict[str, str] | None = None,
              wait: str = "/ready", stop_timeout_s: float = 30) -> Iterator:
        checkpoints = folder / "checkpoints"
        checkpoints.mkdir(exist_ok=True)
        if model is not None:
            shutil.copytree(model, checkpoints / "lstm")
        server = proc_tools.start_serve(checkpoints, folder / "jobs.db", folder / "serve.log", *args,
                                        env=proc_tools.clean_env(**(env or {})), wait=wait, timeout_s=90)
        try:
            yield server
        finally:
            proc_tools.stop(server.proc, timeout_s=stop_timeout_s)

    return start


@pytest.fixture(scope="session")
def processes() -> SimpleNamespace:
    """`processes.rnnlm(*args)` (a command line), `processes.live_children(pid)` and
    `processes.read_until_closed(port, payload)` (raw bytes to a server, its whole answer back)."""
    return SimpleNamespace(rnnlm=rnnlm, live_children=live_children, read_until_closed=read_until_closed)
