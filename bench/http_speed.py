"""The HTTP path against the engine: /v1/score over loopback vs in-process `Engine.score`, in one run.

1. In process: `Engine.score` on batches of 64 WikiText-2 test sentences (--batch), with the server's
   torch threads, in a thread of its own as in the server, for --seconds: tokens/s.
2. A real `rnnlm serve` (a subprocess on a free loopback port, --threads torch threads; --servers of
   them) gets the same batches as /v1/score requests (details off), from 1 client and from 8
   (--clients): tokens/s and the ratio to (1), target >= 0.8x.
3. The same server gets one sentence per request, from 1 client and from 32 (--many): requests/s,
   the ratio concurrent / sequential (target >= 3x) and the error count (target 0; a 503 is an error).

The scenarios run in --rounds interleaved slices, so that the machine's other load falls on all of
them alike. Each client keeps one keep-alive connection and sends its next request as soon as the last is
answered; the clients are plain HTTP/1.1 over asyncio streams (bench/benchlib.py), in this process,
on the same cores as the server: what they cost is part of what is measured.

    python bench/http_speed.py --checkpoints checkpoints --model lstm --threads 1
"""
from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    Connection,
    ServerProcess,
    cpu_seconds,
    load_bench_model,
    model_parser,
    request_bytes,
    serve,
    test_sentences,
)

from models.engine import Engine


@dataclass
class Run:
    """What a scenario measured: answered requests, their tokens and latencies, errors, time, server CPU."""
    requests: int = 0
    tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = float("nan")
    client_cpu: float = 0.0  # CPU seconds of this process (the clients) during the scenario

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1e3 if self.latencies else float("nan")

    def cpu_ms(self) -> float:
        return self.server_cpu / self.requests * 1e3 if self.requests else float("nan")


def batches(sentences: list[str], size: int) -> list[list[str]]:
    return [sentences[i:i + size] for i in range(0, len(sentences) - size + 1, size)]


def in_process(engine: Engine, groups: list[list[str]], seconds: float, run: Run) -> None:
    """`Engine.score` on each batch in turn for `seconds`, in a thread of its own as in the server's
    micro-batcher (on a busy machine torch's two-thread ops called from the main thread ran 10x slower
    than from another thread); adds to `run`."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(_in_process, engine, groups, seconds, run).result()


def _in_process(engine: Engine, groups: list[list[str]], seconds: float, run: Run) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        texts = groups[run.requests % len(groups)]
        t0 = time.perf_counter()
        run.tokens += sum(s.num_tokens for s in engine.score(texts, oov_convention="open-vocab", details=False))
        run.latencies.append(time.perf_counter() - t0)
        run.requests += 1
    run.seconds += time.perf_counter() - start


async def drive(servers: list[ServerProcess], payloads: list[bytes], clients: int, seconds: float,
                run: Run) -> None:
    """`clients` connections (spread over the servers in turn), each sending the next payload as soon as
    its last one is answered, for `seconds`; adds to `run`."""
    turn = iter(range(run.requests + len(run.errors), 10**9))
    conns = [Connection(servers[i % len(servers)].port) for i in range(clients)]
    for conn in conns:  # open every connection before the clock starts
        await conn.call(payloads[0])
    stop = time.perf_counter() + seconds

    async def client(conn: Connection) -> None:
        while time.perf_counter() < stop:
            payload = payloads[next(turn) % len(payloads)]
            t0 = time.perf_counter()
            try:
                status, _, body = await conn.call(payload)
            except (OSError, asyncio.IncompleteReadError) as exc:
                run.errors[type(exc).__name__] = run.errors.get(type(exc).__name__, 0) + 1
                conn.close()
                continue
            if status != 200:
                run.errors[str(status)] = run.errors.get(str(status), 0) + 1
                continue
            run.latencies.append(time.perf_counter() - t0)
            run.requests += 1
            run.tokens += sum(r["num_tokens"] for r in json.loads(body)["results"])

    start, cpu, own = time.perf_counter(), sum(cpu_seconds(s.pid) for s in servers), time.process_time()
    try:
        await asyncio.gather(*(client(conn) for conn in conns))
    finally:
        for conn in conns:
            conn.close()
    run.seconds += time.perf_counter() - start
    run.client_cpu += time.process_time() - own
    run.server_cpu = (0.0 if math.isnan(run.server_cpu) else run.server_cpu) + \
        sum(cpu_seconds(s.pid) for s in servers) - cpu


def line(name: str, run: Run, unit: str) -> str:
    rate = f"{run.tokens_per_s:9,.0f} tokens/s" if unit == "tokens" else f"{run.requests_per_s:8.1f} req/s"
    errors = f"{run.error_count}" + (f" {run.errors}" if run.errors else "")
    return (f"  {name:<22} {rate}   {run.requests:5d} req   p50 {run.p50_ms():8.2f} ms   errors {errors}"
            f"   CPU/req: server {run.cpu_ms():6.2f} ms, clients {run.client_cpu / max(1, run.requests) * 1e3:5.2f} ms")


def main() -> None:
    parser = model_parser(__doc__, threads_help="torch threads, in process and of each server process")
    parser.add_argument("--batch", type=int, default=64, help="sentences per batched request")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of batched requests")
    parser.add_argument("--many", type=int, default=32, help="concurrent clients of one-sentence requests")
    parser.add_argument("--seconds", type=float, default=30, help="length of each scenario, all rounds together")
    parser.add_argument("--rounds", type=int, default=3, help="each scenario runs in this many slices, interleaved")
    parser.add_argument("--servers", type=int, default=1,
                        help="server processes; each client's connection goes to the next one in turn, as the "
                             "kernel spreads connections over processes sharing a port (SO_REUSEPORT)")
    args = parser.parse_args()
    if not (Path(args.checkpoints) / args.model / "config.json").is_file():
        sys.exit(f"no model {args.model!r} in {args.checkpoints}")
    sentences = test_sentences(Path(args.data), 2048)
    groups = batches(sentences, args.batch)
    engine = Engine(load_bench_model(args), state_cache_bytes=0)  # torch threads: --threads
    in_process(engine, groups, 1.0, Run())  # warm-up
    batched = [request_bytes("/v1/score", {"model": args.model, "texts": g, "details": False}) for g in groups]
    single = [request_bytes("/v1/score", {"model": args.model, "texts": [s]}) for s in sentences]
    scenarios = (("batched, 1 client", batched, 1), (f"batched, {args.clients} clients", batched, args.clients),
                 ("single, 1 client", single, 1), (f"single, {args.many} clients", single, args.many))
    engine_run, runs = Run(), {name: Run() for name, _, _ in scenarios}
    slice_s = args.seconds / args.rounds
    with ExitStack() as stack:
        servers = [stack.enter_context(serve(args.checkpoints, args.model, args.threads))
                   for _ in range(args.servers)]
        for _name, payloads, clients in scenarios:  # warm-up
            asyncio.run(drive(servers, payloads, clients, 1.0, Run()))
        # Rounds of every scenario in turn, so that a change in the machine's other load falls on all of them.
        for r in range(args.rounds):
            print(f"[round {r + 1}/{args.rounds}] {slice_s:.0f} s per scenario ...", flush=True)
            in_process(engine, groups, slice_s, engine_run)
            for name, payloads, clients in scenarios:
                asyncio.run(drive(servers, payloads, clients, slice_s, runs[name]))

    workers = f"{args.servers} server processes (connections spread over them in turn)" if args.servers > 1 \
        else "1 server process"
    words = statistics.mean(len(s.split()) for s in sentences)
    print(f"\nmodel {args.model}; {args.threads} torch thread(s) in process and per server process, {workers}; "
          f"WikiText-2 test sentences ({len(sentences)}, {words:.1f} words each)")
    print(f"batches of {args.batch} sentences (/v1/score and Engine.score, details off)")
    print(line("in process", engine_run, "tokens"))
    b1, b8 = runs["batched, 1 client"], runs[f"batched, {args.clients} clients"]
    print(line("http, 1 client", b1, "tokens"))
    print(line(f"http, {args.clients} clients", b8, "tokens"))
    print(f"  http / in process: {b1.tokens_per_s / engine_run.tokens_per_s:.2f}x with 1 client, "
          f"{b8.tokens_per_s / engine_run.tokens_per_s:.2f}x with {args.clients} (target >= 0.8x)")
    print("one sentence per request")
    s1, sn = runs["single, 1 client"], runs[f"single, {args.many} clients"]
    print(line("sequential", s1, "requests"))
    print(line(f"{args.many} clients", sn, "requests"))
    errors = sum(r.error_count for r in runs.values())
    print(f"  {args.many} clients / sequential: {sn.requests_per_s / s1.requests_per_s:.2f}x (target >= 3x); "
          f"errors in all http scenarios: {errors} (target 0)")


if __name__ == "__main__":
    main()
