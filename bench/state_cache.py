"""Predictive typing in-process: Engine.next_word latency by prefix length, state cache on vs off.

Types WikiText-2 test text word by word (as a keyboard would call /v1/next-word after each word)
with two engines on the same loaded model, one with the recurrent-state cache and one without,
and prints the median latency at ~10 and ~200 words and the ratios. No HTTP: bench/load.py
measures the same through a server, where the fixed cost of a request is added to both.

    python bench/state_cache.py --checkpoints checkpoints --model lstm
"""
from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from benchlib import load_bench_model, model_parser

from models.engine import Engine


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--sessions", type=int, default=5, help="texts typed")
    parser.add_argument("--words", type=int, default=200, help="words per text")
    parser.add_argument("--cache-mb", type=float, default=64)
    args = parser.parse_args()
    loaded = load_bench_model(args)
    text = (Path(args.data) / "test.txt").read_text(encoding="utf-8")
    words = [w for line in text.splitlines() if line.strip() and not line.strip().startswith("=")
             for w in re.sub(r"\s+", " ", line).split()]
    engines = {"cache on": Engine(loaded, state_cache_bytes=int(args.cache_mb * 2**20)),
               "cache off": Engine(loaded, state_cache_bytes=0)}
    lat: dict[str, dict[int, list[float]]] = {name: {} for name in engines}
    for session in range(args.sessions):
        typed = words[session * 1000: session * 1000 + args.words]
        for name, engine in engines.items():
            for n in range(args.words + 1):
                prefix = " ".join(typed[:n]) + " " if n else ""
                start = time.perf_counter()
                engine.next_word(prefix, k=5)
                lat[name].setdefault(n, []).append(time.perf_counter() - start)

    def p50(name: str, center: int) -> float:
        return statistics.median(x for n in range(center - 2, center + 3) for x in lat[name].get(n, [])) * 1e3

    short, long_ = 10, args.words - 2
    print(f"model {args.model}: {loaded.config.arch} {loaded.config.layers}x{loaded.config.hidden}, "
          f"vocab {loaded.config.vocab_size:,}; {args.sessions} texts typed word by word, {args.threads} thread(s)")
    for name in engines:
        print(f"  {name:<9} p50 at ~{short} words {p50(name, short):6.2f} ms, at ~{args.words} words "
              f"{p50(name, long_):6.2f} ms: ratio {p50(name, long_) / p50(name, short):.2f}x "
              "(target <= 1.3x with cache)")
    print(f"  at ~{args.words} words the cache is {p50('cache off', long_) / p50('cache on', long_):.1f}x faster "
          f"(target >= 5x)")
    stats = engines["cache on"].state_cache.stats()
    print(f"  cache: {stats['hits']} hits, {stats['misses']} misses, {stats['evictions']} evictions, "
          f"{stats['bytes'] / 2**20:.2f} MiB in {stats['entries']} entries")


if __name__ == "__main__":
    main()
