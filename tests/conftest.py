"""Shared fixtures: the corpora (read in place from ../shared/data) and one tiny trained model."""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RNNLM_TEST_DATA", REPO.parent / "shared" / "data"))
WIKITEXT2 = DATA / "wikitext-2"
PTB = DATA / "ptb"

torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter) -> None:
    """Say loudly when the corpora are missing: the tests that need them skip rather than fail."""
    if not (WIKITEXT2 / "train.txt").exists():
        terminalreporter.write_sep("!", f"corpora not found at {DATA}: the tests that train or score real text "
                                        "were skipped; set RNNLM_TEST_DATA to the folder holding wikitext-2/",
                                   yellow=True)


@pytest.fixture(scope="session")
def wikitext2() -> Path:
    if not (WIKITEXT2 / "train.txt").exists():
        pytest.skip(f"WikiText-2 not found at {WIKITEXT2} (set RNNLM_TEST_DATA)")
    return WIKITEXT2


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, wikitext2) -> Path:
    """A small WikiText-2 slice as a corpus folder (first articles of each split)."""
    folder = tmp_path_factory.mktemp("wt2-slice")
    for split, n in (("train", 1500), ("valid", 200), ("test", 200)):
        lines = (wikitext2 / f"{split}.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (folder / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_corpus) -> Path:
    """An LSTM with title context trained for two quick epochs on the slice."""
    from models.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    cfg = TrainConfig(data=str(tiny_corpus), out=str(out), arch="lstm", emb=32, hidden=48, layers=1,
                      context=True, epochs=2, batch_size=16, bptt=20, max_vocab=3000, seed=1,
                      run_dir=str(out.parent / "run"))
    train(cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, wikitext2: Path) -> Path:
    """A data root for training jobs holding `wt2-400`: the first 400 lines of WikiText-2 train and valid."""
    root = tmp_path_factory.mktemp("data-root")
    (root / "wt2-400").mkdir()
    for split in ("train", "valid"):
        lines = (wikitext2 / f"{split}.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:400]
        (root / "wt2-400" / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    return root


def _wait_for(predicate, timeout: float = 30.0, what: str = "condition",
              proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `predicate` until it returns something truthy (an httpx error counts as not yet); fail at once
    with the tail of `log` if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log is not None else ""
            pytest.fail(f"process exited ({proc.returncode}) while waiting for {what}:\n{tail}")
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-4000:] if log is not None else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f":\n{tail}" if tail else ""))


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, what: str, timeout_s: float = 180.0) -> None:
    """Wait until GET `url` answers 200 (a server's /ready, an exporter's /metrics)."""
    _wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, timeout_s, what, proc, log)


def _stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `timeout_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without RNNLM_* settings (a child must not inherit the developer's), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLM_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@dataclass
class Server:
    """A running `rnnlm serve`: its base URL, process, log file and checkpoint folder."""
    url: str
    proc: subprocess.Popen
    log: Path
    checkpoints: Path


def _start_serve(checkpoints: Path, jobs_db: Path, log: Path, *args: str, env: dict[str, str],
                 wait: str = "/ready", timeout_s: float = 180.0) -> Server:
    """`rnnlm serve ARGS` (one torch thread) on a free port of 127.0.0.1 with this checkpoint folder and job
    store, its output in `log` and `env` as its whole environment; returns once GET `wait` answers 200 (a
    server that does not get there is stopped and the test fails). The caller stops it."""
    from service.server import free_port
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--checkpoints",
                                 str(checkpoints), "--jobs-db", str(jobs_db), "--threads", "1", *args],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, log, checkpoints)
    try:
        _wait_ready(server.url + wait, proc, log, "rnnlm serve", timeout_s=timeout_s)
    except BaseException:
        _stop(proc)
        raise
    return server


@pytest.fixture(scope="session")
def wait_for():
    """`wait_for(predicate, timeout, what, proc=None, log=None)` -> the first truthy value of predicate()."""
    return _wait_for


@pytest.fixture(scope="session")
def free_port():
    """`free_port()` -> a TCP port on 127.0.0.1 that nothing listens on right now."""
    from service.server import free_port as pick
    return pick


@pytest.fixture(scope="session")
def proc_tools(free_port) -> SimpleNamespace:
    """Helpers for tests that start real processes: free_port(), clean_env(**extra), wait_for(predicate,
    timeout, what, proc, log), wait_ready(url, proc, log, what, timeout_s), stop(proc) and
    start_serve(checkpoints, jobs_db, log, *args, env, wait, timeout_s) -> Server."""
    return SimpleNamespace(free_port=free_port, clean_env=_clean_env, wait_for=_wait_for, wait_ready=_wait_ready,
                           stop=_stop, start_serve=_start_serve)


# ---- a real PostgreSQL for the job store ------------------------------------------------------------
def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps initdb and pg_ctl off PATH)."""
    if found := shutil.which("pg_ctl"):
        return Path(found).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres(free_port):
    """A throwaway PostgreSQL server on 127.0.0.1 for this session: initdb in a temporary folder, run as
    the `postgres` user when the tests run as root. `postgres.new_database()` -> the URL of an empty
    database. Skips without PostgreSQL (Debian's `postgresql` package) or psycopg; fails under CI=true."""
    missing = None
    if (bin_dir := _postgres_bin()) is None:
        missing = "no PostgreSQL server programs (initdb, pg_ctl): install Debian's postgresql package"
    elif importlib.util.find_spec("psycopg") is None:
        missing = "psycopg is not installed: pip install -e '.[test]'"
    elif os.geteuid() == 0 and not any(u.pw_name == "postgres" for u in pwd.getpwall()):
        missing = "running as root and there is no `postgres` user to run the server as"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    import psycopg

    user = None
    folder = Path(tempfile.mkdtemp(prefix="rnnlm-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root (Debian's package makes this user)
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    data, port = folder / "data", free_port()
    subprocess.run([bin_dir / "initdb", "-D", data, "-U", "rnnlm", "-A", "trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, **as_user)
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    started = subprocess.run([bin_dir / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-t", "60", "-o", options,
                              "start"], capture_output=True, text=True, **as_user)
    if started.returncode != 0:
        log = (folder / "log").read_text(errors="replace") if (folder / "log").exists() else ""
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{log}")
    databases = iter(range(1, 1_000_000))

    def new_database() -> str:
        name = f"jobs_{next(databases)}"
        with psycopg.connect(f"postgresql://rnnlm@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://rnnlm@127.0.0.1:{port}/{name}"

    try:
        yield SimpleNamespace(new_database=new_database, port=port)
    finally:
        subprocess.run([bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True,
                       **as_user)
        shutil.rmtree(folder, ignore_errors=True)
