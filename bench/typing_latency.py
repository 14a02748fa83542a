"""Typing latency: Engine.next_word per keystroke at 10 and 200 words, neural cache on and off.

Types WikiText-2 test text word by word (each call extends the last text, as a keyboard calling
/v1/next-word would) through three engines on the same loaded model, one keystroke each in turn so
that the machine's load falls on all three alike:

- neural cache: `next_word(..., cache=True)` (the typed text's features, models/neural_cache.py)
- state cache: `next_word(...)` with the recurrent-state cache (models/state_cache.py)
- no cache: `next_word(...)` with the state cache off (RNNLM_STATE_CACHE_MB=0), which reads the whole
  text every keystroke, as an independent request does

and prints the median latency at ~10 and ~200 words, the ratios against the targets (<= 1.3x from 10
to 200 words with a cache; the state cache >= 5x faster than none at 200 words), and, with --profile,
where the time of a keystroke at 200 words goes. With --http the same keystrokes are also sent as
POST /v1/next-word to two `rnnlm serve` processes on loopback, one with the state cache and one with
RNNLM_STATE_CACHE_MB=0 (one keep-alive connection each, the request's whole round trip timed).

    python bench/typing_latency.py --checkpoints checkpoints --models lstm,student --http
"""
from __future__ import annotations

import asyncio
import cProfile
import json
import pstats
import re
import statistics
import time
from pathlib import Path

from benchlib import Connection, load_bench_model, model_parser, request_bytes, serve

from models.engine import Engine

SHORT = 10
SPREAD = 2  # a length's median pools the keystrokes at length - SPREAD .. length + SPREAD
RATIO_TARGET = 1.3
SPEEDUP_TARGET = 5.0


def test_words(data: str) -> list[str]:
    text = (Path(data) / "test.txt").read_text(encoding="utf-8")
    return [w for line in text.splitlines() if line.strip() and not line.strip().startswith("=")
            for w in re.sub(r"\s+", " ", line).split()]


def typed_prefixes(words: list[str], sessions: int, length: int) -> list[list[str]]:
    """Per session, the text after each word typed (a trailing space: the next word is asked for)."""
    out = []
    for session in range(sessions):
        typed = words[session * 1000: session * 1000 + length]
        out.append([" ".join(typed[:n]) + " " if n else "" for n in range(length + 1)])
    return out


def schedule(texts: list[list[str]], typists: int) -> list[tuple[str, int | None]]:
    """(text, words typed, or None for a keystroke not measured) in the order they are sent.

    `typists` people type in turn, one keystroke each per round; typist s starts s/typists of the way into
    its first text (reached by one unmeasured request, as if typed before) and goes on into a second one, so
    every round holds short and long texts alike and the machine's load falls on both evenly.
    """
    length = len(texts[0]) - 1
    starts = [s * (length + 1) // typists for s in range(typists)]
    out: list[tuple[str, int | None]] = [(texts[s][start - 1], None) for s, start in enumerate(starts) if start]
    for r in range(length + 1):
        for s, start in enumerate(starts):
            n = start + r
            out.append((texts[s][n], n) if n <= length else (texts[typists + s][n - length - 1], n - length - 1))
    return out


def profile_keystrokes(engine: Engine, texts: list[str], cache: bool, last: int = 20, top: int = 8) -> list[str]:
    """The functions taking most of the own time of the last `last` keystrokes of `texts`, typed in turn."""
    for text in texts[:-last]:
        engine.next_word(text, k=5, cache=cache)
    profiler = cProfile.Profile()
    profiler.enable()
    for text in texts[-last:]:
        engine.next_word(text, k=5, cache=cache)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [f"{own / last * 1e6:7.1f} us  {Path(file).name}:{line} {name}"
            for (file, line, name), (_, _, own, _, _) in rows]


def median_ms(by_length: dict[int, list[float]], center: int) -> float:
    """Median latency (ms) of the keystrokes at center +- SPREAD words."""
    return statistics.median(x for n in range(center - SPREAD, center + SPREAD + 1)
                             for x in by_length.get(n, [])) * 1e3


async def type_over_http(servers: dict[str, tuple[int, bool]], model: str,
                         order: list[tuple[str, int | None]]) -> dict[str, dict[int, list[float]]]:
    """Latency of each keystroke per configuration (name -> (port, neural cache)), in turn as in-process."""
    connections = {name: Connection(port) for name, (port, _) in servers.items()}
    lat: dict[str, dict[int, list[float]]] = {name: {} for name in servers}
    try:
        for text, n in order:
            for name, (_, cache) in servers.items():
                payload = request_bytes("/v1/next-word", {"model": model, "text": text, "k": 5, "cache": cache})
                start = time.perf_counter()
                status, _, body = await connections[name].call(payload)
                if n is not None:
                    lat[name].setdefault(n, []).append(time.perf_counter() - start)
                if status != 200:
                    raise RuntimeError(f"/v1/next-word answered {status}: {json.loads(body)}")
    finally:
        for connection in connections.values():
            connection.close()
    return lat


def report(model: str, lat: dict[str, dict[int, list[float]]], words: int, where: str) -> None:
    long_ = words - SPREAD
    for config in lat:
        short_ms, long_ms = median_ms(lat[config], SHORT), median_ms(lat[config], long_)
        ratio = long_ms / short_ms
        target = "" if config == "no cache" else (f"  (target <= {RATIO_TARGET}x: "
                                                  f"{'met' if ratio <= RATIO_TARGET else 'MISSED'})")
        print(f"{model:>8} {where:<7} {config:<13} {short_ms:6.2f} ms {long_ms:7.2f} ms {ratio:6.2f}x{target}")
    speedup = median_ms(lat["no cache"], long_) / median_ms(lat["state cache"], long_)
    print(f"{model:>8} {where:<7} at {words} words the state cache is {speedup:.1f}x faster than none "
          f"(target >= {SPEEDUP_TARGET:.0f}x: {'met' if speedup >= SPEEDUP_TARGET else 'MISSED'})")


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--models", default="lstm", help="comma-separated models to measure")
    parser.add_argument("--typists", type=int, default=16, help="people typing in turn (each types 2 texts)")
    parser.add_argument("--words", type=int, default=200, help="words per text")
    parser.add_argument("--cache-mb", type=float, default=64, help="state cache size")
    parser.add_argument("--profile", action="store_true", help="also print where a keystroke at --words goes")
    parser.add_argument("--http", action="store_true", help="also type through two `rnnlm serve` processes")
    args = parser.parse_args()
    words = test_words(args.data)
    sessions = typed_prefixes(words, 2 * args.typists, args.words)
    order = schedule(sessions, args.typists)
    print(f"{args.typists} people typing WikiText-2 test word by word in turn, each at a different length of "
          f"0-{args.words} words; {args.threads} thread(s); p50 over the keystrokes at a length +-{SPREAD}")
    print(f"{'model':>8} {'through':<7} {'cache':<13} {'p50 @' + str(SHORT):>9} {'p50 @' + str(args.words):>10} "
          f"{'ratio':>7}")
    for name in args.models.split(","):
        args.model = name
        loaded = load_bench_model(args)
        configs = {"neural cache": (Engine(loaded, state_cache_bytes=int(args.cache_mb * 2**20)), True),
                   "state cache": (Engine(loaded, state_cache_bytes=int(args.cache_mb * 2**20)), False),
                   "no cache": (Engine(loaded, state_cache_bytes=0), False)}
        if configs["neural cache"][0].cache_params is None:
            del configs["neural cache"]
        lat: dict[str, dict[int, list[float]]] = {c: {} for c in configs}
        for text, n in order:
            for config, (engine, cache) in configs.items():
                start = time.perf_counter()
                engine.next_word(text, k=5, cache=cache)
                if n is not None:
                    lat[config].setdefault(n, []).append(time.perf_counter() - start)

        report(name, lat, args.words, "engine")
        if args.http:
            servers_env = {"RNNLM_MAX_TEXT_CHARS": "100000"}
            with serve(args.checkpoints, name, args.threads, servers_env) as on, \
                    serve(args.checkpoints, name, args.threads, {**servers_env, "RNNLM_STATE_CACHE_MB": "0"}) as off:
                servers = {config: ((off if config == "no cache" else on).port, cache)
                           for config, (_, cache) in configs.items()}
                report(name, asyncio.run(type_over_http(servers, name, order)), args.words, "http")
        if args.profile:
            for config in ("neural cache", "state cache"):
                if config in configs:
                    fresh = Engine(loaded, state_cache_bytes=int(args.cache_mb * 2**20))
                    print(f"  {name} {config}: own time per keystroke at {args.words} words, largest first")
                    for row in profile_keystrokes(fresh, sessions[0], configs[config][1]):
                        print("    " + row)


if __name__ == "__main__":
    main()
