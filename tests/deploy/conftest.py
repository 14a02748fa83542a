"""Deployment fixtures: the compose file as compose reads it, the tools some tests need, and a live
`rnnlm serve` + `rnnlm worker` pair on 127.0.0.1 (the tiny model from tests/conftest.py).

Tools that a developer may lack (promtool, prometheus, jsonschema) make their tests skip, with the
reason; under CI (`CI` set, where .ci/run installs them) a missing tool is a failure instead, so a
green CI never hides deployment tests that did not run.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


def _missing(what: str, how: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI ({how})")
    pytest.skip(f"{what} not installed ({how})")


@pytest.fixture(scope="session")
def need_tool() -> Callable[[str], str]:
    """`need_tool("promtool")` -> its path; skips (fails under CI) when it is not on PATH."""
    def need(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            _missing(f"`{name}`", "apt-get install prometheus; .ci/run does it")
        return path
    return need


@pytest.fixture(scope="session")
def need_module() -> Callable[[str], ModuleType]:
    """`need_module("jsonschema")` -> the module; skips (fails under CI) when it is not installed."""
    def need(name: str) -> ModuleType:
        try:
            return __import__(name)
        except ImportError:
            _missing(f"Python package {name!r}", "pip install -e '.[test]'")
    return need


# ---- docker-compose.yml as compose reads it --------------------------------------------------------
def read_env_file(path: Path) -> dict[str, str]:
    """A dotenv file as compose reads it: KEY=VALUE lines, `#` comments, optional quotes."""
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        value = value.strip()
        if value[:1] in "'\"" and value[-1:] == value[:1] and len(value) > 1:
            value = value[1:-1]
        else:
            value = re.sub(r"\s+#.*$", "", value)
        env[key.strip()] = value
    return env


class InterpolationError(ValueError):
    pass


_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: dict[str, str], used: set[str] | None = None) -> Any:
    """Compose's variable substitution over every string of a parsed compose file:
    `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["plain"]
        if used is not None:
            used.add(name)
        op, arg, current = m["op"], m["arg"] or "", env.get(name)
        present = current is not None and (current != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return current if present else arg
        if op in (":?", "?"):
            if not present:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return current
        if op in (":+", "+"):
            return arg if present else ""
        return current or ""

    return _VAR.sub(sub, value)


@pytest.fixture(scope="session")
def substitute() -> Callable[..., Any]:
    """`substitute(document, env, used=None)`: compose's variable substitution (raises ValueError)."""
    return interpolate


@pytest.fixture(scope="session")
def raw_compose(need_module) -> dict:
    yaml = need_module("yaml")
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))  # safe_load resolves the `<<` merge keys


@pytest.fixture(scope="session")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="session")
def compose(raw_compose: dict, env_example: dict[str, str]) -> dict:
    """docker-compose.yml after substitution with the values of .env.example (what `cp .env.example .env` runs)."""
    return interpolate(raw_compose, env_example)


# ---- a live api + worker pair ------------------------------------------------------------------------
@dataclass
class Stack:
    api_url: str
    api_port: int
    worker_metrics_port: int
    logs: Path

    @property
    def worker_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.worker_metrics_port}/metrics"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, proc_tools) -> Iterator[Stack]:
    """`rnnlm serve` and `rnnlm worker` as real processes sharing a checkpoint dir and job database,
    as the compose file runs them (but on 127.0.0.1 and free ports)."""
    root = tmp_path_factory.mktemp("deploy-stack")
    checkpoints, jobs_db = root / "checkpoints", root / "jobs" / "jobs.db"
    checkpoints.mkdir()
    jobs_db.parent.mkdir()
    shutil.copytree(tiny_model, checkpoints / "lstm")
    api_port, metrics_port = proc_tools.free_port(), proc_tools.free_port()
    common = ["--checkpoints", str(checkpoints), "--jobs-db", str(jobs_db), "--threads", "1"]
    procs: list[subprocess.Popen] = []
    logs = {}
    try:
        for name, args in (("api", ["serve", "--port", str(api_port), *common]),
                           ("worker", ["worker", "--metrics-port", str(metrics_port), *common])):
            logs[name] = root / f"{name}.log"
            with open(logs[name], "wb") as out:
                procs.append(subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=REPO,
                                              env=proc_tools.clean_env(), stdout=out, stderr=subprocess.STDOUT))
        s = Stack(api_url=f"http://127.0.0.1:{api_port}", api_port=api_port, worker_metrics_port=metrics_port,
                  logs=root)
        proc_tools.wait_ready(f"{s.api_url}/ready", procs[0], logs["api"], "rnnlm serve")
        proc_tools.wait_ready(s.worker_metrics_url, procs[1], logs["worker"], "rnnlm worker")
        yield s
    finally:
        for proc in procs:
            proc_tools.stop(proc)
