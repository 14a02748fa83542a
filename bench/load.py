"""Load test of a real server process: latency, throughput and errors, with and without the optimisations.

Starts `python -m service.cli serve` on a free loopback port twice, first with micro-batching and the
recurrent-state cache on (the defaults), then with both off (RNNLM_BATCHING=false,
RNNLM_STATE_CACHE_MB=0), and runs the same three scenarios against each:

- sequential scoring: one client, one WikiText-2 test sentence per /v1/score request;
- concurrent scoring: 32 clients (--clients), one sentence per request;
- typing: /v1/next-word after every word of a text, word by word up to 200 words (--words).

Scoring never touches the state cache and next-word never goes through the batcher, so each
scenario's ratio isolates one optimisation. Bounded in requests and in seconds per scenario. The
clients are rnnlm_client's AsyncClient with retries off, so a 503 counts as an error, not a wait.

    python bench/load.py --checkpoints checkpoints --model lstm
"""
from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import cpu_seconds, model_parser, serve, test_sentences

from rnnlm_client import APIConnectionError, APIError, AsyncClient, Client

CONFIGS = {"optimised": {}, "baseline": {"RNNLM_BATCHING": "false", "RNNLM_STATE_CACHE_MB": "0"}}


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    server_cpu: float = float("nan")  # CPU seconds the server process used during the scenario

    def add(self, latency: float, ok: bool) -> None:
        self.latencies.append(latency)
        self.errors += not ok

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] * 1e3 if xs else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else float("nan")

    @property
    def cpu_per_request(self) -> float:
        return self.server_cpu / len(self.latencies) * 1e3 if self.latencies else float("nan")

    def line(self, name: str) -> str:
        return (f"  {name:<10} {len(self.latencies):5d} req {self.throughput:7.1f} req/s   p50 {self.pct(50):7.2f} ms"
                f"   p95 {self.pct(95):7.2f} ms   p99 {self.pct(99):7.2f} ms   errors {self.errors}"
                f"   server CPU {self.cpu_per_request:5.2f} ms/req")


async def timed(call: Awaitable[object], result: Result) -> None:
    """Await one client call; its latency, and whether it succeeded."""
    start = time.perf_counter()
    try:
        await call
        ok = True
    except (APIError, APIConnectionError):
        ok = False
    result.add(time.perf_counter() - start, ok)


def bench_client(url: str) -> AsyncClient:
    return AsyncClient(url, timeout=60, max_retries=0)


async def scoring(url: str, pid: int, model: str, sentences: list[str], clients: int, requests: int,
                  time_limit: float) -> Result:
    """`clients` concurrent clients sending `requests` one-sentence /v1/score requests in all."""
    result = Result()
    todo = iter(range(requests))
    stop = time.perf_counter() + time_limit

    async def client_loop(client: AsyncClient) -> None:
        for i in todo:
            if time.perf_counter() > stop:
                return
            await timed(client.score([sentences[i % len(sentences)]], model=model), result)

    # One connection per client, as separate users would have (and httpx's pool is slow to share).
    pool = [bench_client(url) for _ in range(clients)]
    try:
        for client in pool:  # connect, and warm up
            await timed(client.score(sentences[:2], model=model), Result())
        start, cpu = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(client_loop(client) for client in pool))
        result.seconds = time.perf_counter() - start
        result.server_cpu = cpu_seconds(pid) - cpu
    finally:
        for client in pool:
            await client.aclose()
    return result


async def typing(url: str, model: str, words: list[str], sessions: int, length: int,
                 time_limit: float) -> dict[int, Result]:
    """Type `sessions` texts word by word; latency of /v1/next-word by prefix length (in words)."""
    by_length: dict[int, Result] = {}
    stop = time.perf_counter() + time_limit
    async with bench_client(url) as client:
        for session in range(sessions):
            start = session * 37 % max(1, len(words) - length)
            text = words[start:start + length]
            for n in range(length + 1):
                if time.perf_counter() > stop:
                    return by_length
                typed = " ".join(text[:n]) + " " if n else ""
                await timed(client.next_word(typed, k=5, model=model), by_length.setdefault(n, Result()))
    return by_length


def window(by_length: dict[int, Result], center: int, half: int = 2) -> Result:
    """Latencies at prefix lengths center-half .. center+half (a few samples per session)."""
    out = Result()
    for n in range(center - half, center + half + 1):
        if n in by_length:
            out.latencies += by_length[n].latencies
            out.errors += by_length[n].errors
    return out


def metric(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}{{model="{re.escape(model)}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else float("nan")


def main() -> None:
    parser = model_parser(__doc__, threads_help="torch threads of the server")
    parser.add_argument("--sequential", type=int, default=100, help="requests in the sequential scenario")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--concurrent", type=int, default=640, help="requests in the concurrent scenario")
    parser.add_argument("--sessions", type=int, default=3, help="texts typed in the typing scenario")
    parser.add_argument("--words", type=int, default=200, help="words typed per session")
    parser.add_argument("--time-limit", type=float, default=60, help="seconds per scenario at most")
    args = parser.parse_args()
    if not (Path(args.checkpoints) / args.model / "config.json").is_file():
        sys.exit(f"no model {args.model!r} in {args.checkpoints}")
    sentences = test_sentences(Path(args.data), 2000)
    words = " ".join(sentences).split()
    checkpoints = str(Path(args.checkpoints).resolve())
    results: dict[str, dict] = {}
    for name, env in CONFIGS.items():
        print(f"[{name}] starting server ({env or 'batching and state cache on'}) ...", flush=True)
        with serve(checkpoints, args.model, args.threads, {"RNNLM_MAX_TEXT_CHARS": "100000", **env}) as server:
            url, pid = server.url, server.pid
            r = results[name] = {}
            for scenario, clients, requests in (("sequential", 1, args.sequential),
                                                ("concurrent", args.clients, args.concurrent)):
                r[scenario] = asyncio.run(scoring(url, pid, args.model, sentences, clients, requests,
                                                  args.time_limit))
            cpu = cpu_seconds(pid)
            r["typing"] = asyncio.run(typing(url, args.model, words, args.sessions, args.words, args.time_limit))
            r["typing_cpu"] = cpu_seconds(pid) - cpu
            with Client(url, max_retries=0) as client:
                r["metrics"] = client.metrics()

    print(f"\nmodel {args.model}, server torch threads {args.threads}; scoring requests carry one WikiText-2 "
          "test sentence each")
    for scenario, title in (("sequential", "sequential scoring (1 client)"),
                            ("concurrent", f"concurrent scoring ({args.clients} clients)")):
        print(f"\n{title}")
        for name in CONFIGS:
            print(results[name][scenario].line(name))
        on, off = results["optimised"][scenario], results["baseline"][scenario]
        cpu = on.cpu_per_request / off.cpu_per_request
        print(f"  batching on / off: throughput {on.throughput / off.throughput:.2f}x, p50 latency "
              f"{on.pct(50) / off.pct(50):.2f}x, server CPU per request {cpu:.2f}x")
    short, long_ = 10, args.words
    print(f"\ntyping: /v1/next-word word by word ({args.sessions} sessions of {args.words} words)")
    for name in CONFIGS:
        typed = results[name]["typing"]
        everything = Result(latencies=[x for r in typed.values() for x in r.latencies],
                            errors=sum(r.errors for r in typed.values()))
        everything.seconds, everything.server_cpu = sum(everything.latencies), results[name]["typing_cpu"]
        print(everything.line(name))
        a, b = window(typed, short), window(typed, long_ - 2)
        print(f"  {'':<10} p50 at ~{short} words {a.pct(50):6.2f} ms, at ~{long_} words {b.pct(50):6.2f} ms: "
              f"ratio {b.pct(50) / a.pct(50):.2f}x")
    on, off = window(results["optimised"]["typing"], long_ - 2), window(results["baseline"]["typing"], long_ - 2)
    print(f"  at ~{long_} words the cache is {off.pct(50) / on.pct(50):.2f}x faster (p50)")
    text = results["optimised"]["metrics"]
    count = metric(text, "rnnlm_batch_size_count", args.model)
    mean = metric(text, "rnnlm_batch_size_sum", args.model) / count if count else float("nan")
    print(f"\nserver metrics (optimised run): {count:.0f} batched engine calls, {mean:.1f} texts each on average; "
          f"state cache {metric(text, 'rnnlm_state_cache_hits_total', args.model):.0f} hits, "
          f"{metric(text, 'rnnlm_state_cache_misses_total', args.model):.0f} misses")


if __name__ == "__main__":
    main()
