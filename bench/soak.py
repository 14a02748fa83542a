"""Soak under overload: admitted-request latency, 503s, 5xx and server memory at 8 and at 200 clients.

Starts one `python -m service.cli serve` on a free loopback port (admission control at its defaults)
and drives it with a mix of requests: one WikiText-2 test sentence to /v1/score, a sentence prefix
to /v1/next-word, a short /v1/generate (20 tokens) -- first from 8 clients, then from 200, for
--seconds each. Each client keeps one connection and sends its next request as soon as the last
one is answered; after a 503 it waits for the Retry-After the server sent (0.5-1.5 x, so that the
retries do not arrive in step), as a well-behaved client does. The clients speak plain HTTP/1.1
over asyncio streams: an HTTP library would use more of the two cores than the server's 503 path.

    python bench/soak.py --checkpoints checkpoints --model lstm
"""
from __future__ import annotations

import asyncio
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import Connection, model_parser, request_bytes, serve, test_sentences

MIX = (("score", 0.5), ("next-word", 0.35), ("generate", 0.15))


@dataclass
class Phase:
    clients: int
    admitted: dict[str, list[float]] = field(default_factory=dict)  # kind -> latencies of 200s, seconds
    refused: list[float] = field(default_factory=list)  # latencies of 503s
    server_errors: int = 0  # 5xx other than 503
    other: dict[str, int] = field(default_factory=dict)  # anything else: 4xx, connection errors
    seconds: float = 0.0
    limits: list[float] = field(default_factory=list)  # the server's admission limit, read every second

    @property
    def ok(self) -> list[float]:
        return [x for xs in self.admitted.values() for x in xs]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] * 1e3 if xs else float("nan")


def rss_mib(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def make_requests(sentences: list[str], model: str, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    kinds, weights = zip(*MIX)
    while True:
        kind = rng.choices(kinds, weights)[0]
        sentence = rng.choice(sentences)
        if kind == "score":
            yield kind, request_bytes("/v1/score", {"model": model, "texts": [sentence]})
        elif kind == "next-word":
            words = sentence.split()
            prefix = " ".join(words[:rng.randint(1, len(words) - 1)]) + " "
            yield kind, request_bytes("/v1/next-word", {"model": model, "text": prefix, "k": 5})
        else:
            prompt = " ".join(sentence.split()[:4])
            yield kind, request_bytes("/v1/generate", {"model": model, "prompt": prompt, "max_tokens": 20,
                                                       "seed": rng.randrange(1000)})


async def run_phase(port: int, sentences: list[str], model: str, clients: int, seconds: float) -> Phase:
    phase = Phase(clients)
    stop = time.perf_counter() + seconds

    async def client(index: int) -> None:
        rng = random.Random(index)
        conn = Connection(port)
        requests = make_requests(sentences, model, rng)
        try:
            while time.perf_counter() < stop:
                kind, payload = next(requests)
                start = time.perf_counter()
                try:
                    status, headers, _ = await conn.call(payload)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    phase.other[type(exc).__name__] = phase.other.get(type(exc).__name__, 0) + 1
                    conn.close()
                    continue
                latency = time.perf_counter() - start
                if status == 200:
                    phase.admitted.setdefault(kind, []).append(latency)
                elif status == 503:
                    phase.refused.append(latency)
                    await asyncio.sleep(float(headers.get("retry-after", 1)) * rng.uniform(0.5, 1.5))
                elif status >= 500:
                    phase.server_errors += 1
                else:
                    phase.other[str(status)] = phase.other.get(str(status), 0) + 1
        finally:
            conn.close()

    async def watch_limit() -> None:
        conn = Connection(port)
        while time.perf_counter() < stop:
            await asyncio.sleep(1)
            try:
                text = await conn.get("/metrics")
            except (OSError, asyncio.IncompleteReadError):
                conn.close()
                continue
            if match := re.search(r"^rnnlm_admission_limit (\S+)$", text, re.M):
                phase.limits.append(float(match.group(1)))
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(watch_limit(), *(client(i) for i in range(clients)))
    phase.seconds = time.perf_counter() - start
    return phase


def admission_metrics(port: int) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = dict(re.findall(r'^rnnlm_admission_(limit|admitted_total|rejected_total\{reason="\w+"\}) (\S+)$',
                            text, re.M))
    return ", ".join(f"{k} {float(v):g}" for k, v in sorted(found.items()))


def report(name: str, p: Phase) -> None:
    total = len(p.ok) + len(p.refused) + p.server_errors + sum(p.other.values())
    print(f"{name}: {total} requests in {p.seconds:.0f} s, {len(p.ok) / p.seconds:.1f} admitted/s")
    print(f"  admitted   {len(p.ok):6d}   p50 {pct(p.ok, 50):8.1f} ms   p99 {pct(p.ok, 99):8.1f} ms   "
          f"max {pct(p.ok, 100):8.1f} ms")
    for kind, _ in MIX:
        xs = p.admitted.get(kind, [])
        print(f"    {kind:<10} {len(xs):6d}   p50 {pct(xs, 50):8.1f} ms   p99 {pct(xs, 99):8.1f} ms")
    print(f"  503        {len(p.refused):6d}   p50 {pct(p.refused, 50):8.1f} ms   p99 {pct(p.refused, 99):8.1f} ms"
          "   (time to the 503)")
    print(f"  5xx (not 503) {p.server_errors}; other: {p.other or 'none'}")
    if p.limits:
        limits = sorted(p.limits)
        print(f"  admission limit, read every second: min {limits[0]:g}, median {limits[len(limits) // 2]:g}, "
              f"max {limits[-1]:g}")


def main() -> None:
    parser = model_parser(__doc__, threads_help="torch threads of the server")
    parser.add_argument("--seconds", type=float, default=60, help="length of each phase")
    parser.add_argument("--low", type=int, default=8, help="clients of the baseline phase")
    parser.add_argument("--high", type=int, default=200, help="clients of the overload phase")
    parser.add_argument("--set", action="append", default=[], metavar="RNNLM_X=VALUE",
                        help="a server setting (repeatable); the defaults otherwise")
    args = parser.parse_args()
    if not (Path(args.checkpoints) / args.model / "config.json").is_file():
        sys.exit(f"no model {args.model!r} in {args.checkpoints}")
    sentences = [s for s in test_sentences(Path(args.data), 2000) if len(s.split()) >= 4]
    settings = dict(setting.split("=", 1) for setting in args.set)
    with serve(args.checkpoints, args.model, args.threads, settings) as server:
        port, pid = server.port, server.pid
        asyncio.run(run_phase(port, sentences, args.model, 2, 3))  # warm-up
        rss = [rss_mib(pid)]
        phases = []
        for clients in (args.low, args.high):
            print(f"[{clients} clients for {args.seconds:.0f} s] ...", flush=True)
            phases.append(asyncio.run(run_phase(port, sentences, args.model, clients, args.seconds)))
            rss.append(rss_mib(pid))
            print(f"  server: {admission_metrics(port)}", flush=True)
    low, high = phases
    mix = ", ".join(f"{k} {w:.0%}" for k, w in MIX)
    print(f"\nmodel {args.model}, server torch threads {args.threads}; mix: {mix}; a 503 is retried after "
          "its Retry-After")
    report(f"{args.low} clients", low)
    report(f"{args.high} clients", high)
    ratio = pct(high.ok, 99) / pct(low.ok, 99)
    print(f"server RSS: {rss[0]:.0f} MiB after warm-up, {rss[1]:.0f} MiB after {args.low} clients, "
          f"{rss[2]:.0f} MiB after {args.high} clients ({rss[2] - rss[0]:+.0f} MiB)")
    print("targets:")
    print(f"  5xx: {low.server_errors + high.server_errors} (target 0)")
    print(f"  admitted p99 at {args.high} clients / at {args.low}: {ratio:.2f}x (target <= 3x)")
    print(f"  503 answered in p99 {pct(high.refused, 99):.1f} ms (target <= 50 ms)")


if __name__ == "__main__":
    main()
