"""Requests per second through Ray Serve with 1 and 2 replicas, against one plain `rnnlm serve` process.

Starts, one after the other on a free loopback port: `rnnlm serve` (the baseline), then
`rnnlm serve --ray --replicas 1` and `--replicas 2` (a local one-node Ray cluster each time), every
server with one torch thread per process. Against each it runs the same closed loop for --seconds:
--clients threads, each sending /v1/score requests of --texts WikiText-2 test sentences, one after
the other; it reports requests/s, p50 latency and errors, and the ratios to the baseline and to one
replica measured in the same run. Needs the ray extra (pip install -e '.[ray]').

    python bench/ray_replicas.py --checkpoints checkpoints --model lstm
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from benchlib import free_port, test_sentences

REPO = Path(__file__).resolve().parents[1]


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLM_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                                 "--threads", "1", *cmd], cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    sys.exit(f"server not ready after 300 s:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def load(url: str, body: dict, clients: int, seconds: float, warmup: int = 4) -> dict:
    with httpx.Client(base_url=url, timeout=60) as http:  # both replicas load their model before timing
        for _ in range(warmup):
            http.post("/v1/score", json=body)
    latencies: list[float] = []
    replicas: set[str] = set()
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                r = http.post("/v1/score", json=body)
                with lock:
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                        replicas.add(r.headers.get("x-replica", "-"))
                    else:
                        errors[0] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else 0,
            "requests": len(latencies), "errors": errors[0], "replicas": len(replicas - {"-"})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default=str(REPO / "checkpoints"))
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--data", default=os.environ.get("RNNLM_TEST_DATA", str(REPO.parent / "shared" / "data"))
                        + "/wikitext-2")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--texts", type=int, default=8, help="sentences per request")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    body = {"model": args.model, "texts": test_sentences(Path(args.data), args.texts)}
    layouts = [("rnnlm serve (1 process)", []),
               ("ray, 1 replica", ["--ray", "--replicas", "1", "--replica-cpus", "1"]),
               ("ray, 2 replicas", ["--ray", "--replicas", "2", "--replica-cpus", "1"])]
    print(f"{os.cpu_count()} CPUs; /v1/score with {args.texts} sentences per request, model {args.model}, "
          f"{args.clients} clients, {args.seconds:.0f} s each; one torch thread per server process")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in layouts:
            port = free_port()
            proc = start(["--checkpoints", args.checkpoints, *flags], port, Path(tmp) / "serve.log")
            try:
                rows.append((name, load(f"http://127.0.0.1:{port}", body, args.clients, args.seconds)))
            finally:
                stop(proc)
    base, one = rows[0][1]["rps"], rows[1][1]["rps"]
    print(f"{'layout':>24} {'req/s':>7} {'p50 ms':>7} {'errors':>6} {'replicas seen':>13} {'vs 1 process':>12} "
          f"{'vs 1 replica':>12}")
    for name, r in rows:
        print(f"{name:>24} {r['rps']:7.1f} {r['p50_ms']:7.0f} {r['errors']:6d} {r['replicas']:13d} "
              f"{r['rps'] / base:11.2f}x {r['rps'] / one:11.2f}x")


if __name__ == "__main__":
    main()
