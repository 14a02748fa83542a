"""Typing latency: Engine.next_word per keystroke at 10 and 200 words, neural cache on and off.

Types WikiText-2 test text word by word (each call extends the last text, as a keyboard calling
/v1/next-word would) through three engines on the same loaded model, one keystroke each in turn so
that the machine's load falls on all three alike:

- neural cache: `next_word(..., cache=True)` (the typed text's features, models/neural_cache.py)
- state cache: `next_word(...)` with the recurrent-state cache (models/state_cache.py)
- no cache: `next_word(...)` with the state cache off (RNNLM_STATE_CACHE_MB=0), which reads the whole
  text every keystroke, as an independent request does

and prints the median latency at ~10 and ~200 words, the ratios against the targets (<= 1.3x from 10
to 200 words with a cache; the state cache >= 5x faster than none at 200 words), and where the time
of a keystroke at 200 words goes.

    python bench/typing_latency.py --checkpoints checkpoints --models lstm,student
"""
from __future__ import annotations

import cProfile
import pstats
import re
import statistics
import time
from pathlib import Path

from benchlib import load_bench_model, model_parser

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


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--models", default="lstm", help="comma-separated models to measure")
    parser.add_argument("--sessions", type=int, default=5, help="texts typed per model")
    parser.add_argument("--words", type=int, default=200, help="words per text")
    parser.add_argument("--cache-mb", type=float, default=64, help="state cache size")
    parser.add_argument("--profile", action="store_true", help="also print where a keystroke at --words goes")
    args = parser.parse_args()
    words = test_words(args.data)
    sessions = typed_prefixes(words, args.sessions, args.words)
    long_ = args.words - SPREAD
    print(f"typing {args.sessions} texts of WikiText-2 test word by word up to {args.words} words, "
          f"{args.threads} thread(s); p50 over keystrokes at length +-{SPREAD}")
    print(f"{'model':>8} {'cache':<13} {'p50 @' + str(SHORT):>9} {'p50 @' + str(args.words):>10} {'ratio':>7}")
    for name in args.models.split(","):
        args.model = name
        loaded = load_bench_model(args)
        configs = {"neural cache": (Engine(loaded, state_cache_bytes=int(args.cache_mb * 2**20)), True),
                   "state cache": (Engine(loaded, state_cache_bytes=int(args.cache_mb * 2**20)), False),
                   "no cache": (Engine(loaded, state_cache_bytes=0), False)}
        if configs["neural cache"][0].cache_params is None:
            del configs["neural cache"]
        lat: dict[str, dict[int, list[float]]] = {c: {} for c in configs}
        for texts in sessions:
            for n, text in enumerate(texts):
                for config, (engine, cache) in configs.items():
                    start = time.perf_counter()
                    engine.next_word(text, k=5, cache=cache)
                    lat[config].setdefault(n, []).append(time.perf_counter() - start)

        def p50(config: str, center: int, lat: dict = lat) -> float:
            return median_ms(lat[config], center)

        for config in configs:
            ratio = p50(config, long_) / p50(config, SHORT)
            target = "" if config == "no cache" else (f"  (target <= {RATIO_TARGET}x: "
                                                      f"{'met' if ratio <= RATIO_TARGET else 'MISSED'})")
            print(f"{name:>8} {config:<13} {p50(config, SHORT):6.2f} ms {p50(config, long_):7.2f} ms "
                  f"{ratio:6.2f}x{target}")
        speedup = p50("no cache", long_) / p50("state cache", long_)
        print(f"{name:>8} at {args.words} words the state cache is {speedup:.1f}x faster than none "
              f"(target >= {SPEEDUP_TARGET:.0f}x: {'met' if speedup >= SPEEDUP_TARGET else 'MISSED'})")
        if args.profile:
            for config in ("neural cache", "state cache"):
                if config in configs:
                    fresh = Engine(loaded, state_cache_bytes=int(args.cache_mb * 2**20))
                    print(f"  {name} {config}: own time per keystroke at {args.words} words, largest first")
                    for row in profile_keystrokes(fresh, sessions[0], configs[config][1]):
                        print("    " + row)


if __name__ == "__main__":
    main()
