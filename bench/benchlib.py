"""What the benchmarks share: the model/data flags, WikiText-2 test sentences, a median timer, a free port,
a `rnnlm serve` subprocess and a plain HTTP/1.1 client."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.server import free_port  # noqa: F401 (the bench scripts take it from here)


def model_parser(doc: str, threads_help: str = "torch threads") -> argparse.ArgumentParser:
    """An argument parser with --checkpoints, --model, --data and --threads (the script adds its own flags)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--checkpoints", default="checkpoints")
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    return parser


def load_bench_model(args: argparse.Namespace):
    """Set the torch thread count from --threads and load the model named by --checkpoints/--model."""
    import torch

    from models.checkpoint import load_model
    torch.set_num_threads(args.threads)
    return load_model(Path(args.checkpoints) / args.model)


def test_sentences(data: Path, n: int) -> list[str]:
    """The first n sentences (3+ tokens) of WikiText-2 test, headings skipped."""
    out: list[str] = []
    for line in (Path(data) / "test.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        out += [s for s in re.split(r"(?<= \.) ", line) if len(s.split()) >= 3]
        if len(out) >= n:
            break
    return out[:n]


def median_seconds(func: Callable[[], object], repeat: int = 3) -> float:
    """Median wall time of `repeat` calls after one warm-up call."""
    func()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


REPO = Path(__file__).resolve().parents[1]


@dataclass
class ServerProcess:
    """A `rnnlm serve` started by `serve`: its loopback port and the pid of its main process."""
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve(checkpoints: str, model: str, threads: int, env: dict[str, str] | None = None,
          args: Sequence[str] = (), ready_timeout_s: float = 180) -> Iterator[ServerProcess]:
    """`python -m service.cli serve` on a free loopback port with the default settings but for `env`
    (the caller's RNNLM_* variables are dropped); yields once /ready says 200, stops it on exit."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLM_")}
        full_env.update(RNNLM_RELOAD_INTERVAL_S="0", RNNLM_DEFAULT_MODEL=model, RNNLM_THREADS=str(threads),
                        RNNLM_JOBS_DB=str(Path(tmp) / "jobs.db"), **(env or {}))
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--checkpoints",
               str(Path(checkpoints).resolve()), "--log-level", "warning", *args]
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env)
        try:
            deadline = time.monotonic() + ready_timeout_s
            while not _ready(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {ready_timeout_s:.0f} s")
                time.sleep(0.25)
            yield ServerProcess(port, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children still running (Linux /proc; NaN elsewhere)."""
    def own(p: int) -> tuple[float, int]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12]), int(fields[1])  # utime + stime, parent pid

    try:
        total = own(pid)[0]
    except OSError:
        return float("nan")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(pid):
            try:
                ticks, parent = own(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                total += ticks
    return total / os.sysconf("SC_CLK_TCK")


def request_bytes(path: str, body: dict) -> bytes:
    """One HTTP/1.1 POST of a JSON body, ready to write on a keep-alive connection."""
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


class Connection:
    """One keep-alive HTTP/1.1 connection over asyncio streams: send a request, read the status, headers
    and body. An HTTP library would spend more of the cores the server shares with the load generator."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    async def get(self, path: str) -> str:
        return (await self.call(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()))[2].decode()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
