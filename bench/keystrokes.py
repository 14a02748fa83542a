"""Keystrokes saved by predictive typing: a person types the first --lines paragraphs of WikiText-2 test
with top-k suggestions (k = 1, 3, 5) under the cursor, as the page shows them.

After each typed character (and before the first one of a word) the suggestions are asked for
(`Engine.next_word`: next words, or completions of the half-typed word); when the intended word is
among the top k, one key accepts it (word and space). Keystroke savings = 1 - keys pressed / characters,
the standard word-prediction measure (characters count each word and the space after it). The
suggestions at a given point do not depend on k, so one pass with k = 5 serves all three.

Each model runs with and without the neural cache (the paragraph typed so far) and the topic (the
article's title as `context`, for models trained with one), beside a bigram baseline built from the
training counts in the same run. suggestions/s is next-word calls per second of this single-threaded loop.

    python bench/keystrokes.py --lines 4
"""
from __future__ import annotations

import bisect
import heapq
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.benchlib import model_parser
from models.checkpoint import load_model
from models.data import read_lines, split_path, title_of
from models.engine import Engine
from models.tokenizer import EOS, UNK

KS = (1, 3, 5)
WORD = re.compile(r"\w+")
Suggest = Callable[[list[str], str, str | None], list[str]]  # (words so far, half-typed word, topic) -> top 5


def paragraphs(data: Path, n: int) -> list[tuple[list[str], str | None]]:
    """The first n paragraphs of the test split, each with the title of its article."""
    out, title = [], None
    for line in read_lines(split_path(data, "test")):
        tokens = line.split()
        if not tokens:
            continue
        heading = title_of(tokens)
        if heading is not None:
            if line.startswith(" = ") and not line.startswith(" = = "):
                title = " ".join(heading)
            continue
        out.append((tokens, title))
        if len(out) >= n:
            break
    return out


def simulate(texts: list[tuple[list[str], str | None]], suggest: Suggest) -> tuple[dict[int, float], float]:
    """Keystroke savings per k and suggestions per second for one way of suggesting."""
    keys = dict.fromkeys(KS, 0)
    chars, calls, seconds = 0, 0, 0.0
    for tokens, title in texts:
        for i, word in enumerate(tokens):
            chars += len(word) + 1
            accepted: dict[int, int] = {}
            for typed in range(len(word)):
                partial = word[:typed]
                if partial and not WORD.fullmatch(partial):
                    break  # the page completes word characters only: the rest is typed
                t0 = time.perf_counter()
                offered = suggest(tokens[:i], partial, title)
                seconds += time.perf_counter() - t0
                calls += 1
                for k in KS:
                    if k not in accepted and word in offered[:k]:
                        accepted[k] = typed + 1  # the typed characters and the accepting key
                if 1 in accepted:
                    break
            for k in KS:
                keys[k] += accepted.get(k, len(word) + 1)
    return {k: 1 - keys[k] / chars for k in KS}, calls / max(seconds, 1e-9)


def engine_suggest(engine: Engine, cache: bool, topic: bool) -> Suggest:
    def suggest(words: list[str], partial: str, title: str | None) -> list[str]:
        text = " ".join(words) + (" " if words else "") + partial
        result = engine.next_word(text, k=5, context=title if topic else None, cache=cache)
        return [p.word for p in result.predictions]
    return suggest


class Bigram:
    """Most frequent followers of the previous word in the training text, then the most frequent words."""

    def __init__(self, lines: list[str]) -> None:
        self.follow: dict[str, Counter[str]] = defaultdict(Counter)
        self.unigram: Counter[str] = Counter()
        for line in lines:
            tokens = line.split()
            for prev, word in zip([EOS, *tokens], tokens):
                self.follow[prev][word] += 1
            self.unigram.update(tokens)
        for table in (*self.follow.values(), self.unigram):
            table.pop(UNK, None)
        self._sorted: dict[int, list[str]] = {}
        self._memo: dict[tuple[str, str], list[str]] = {}

    def _top(self, table: Counter[str], partial: str, k: int) -> list[str]:
        if not partial:
            return [w for w, _ in table.most_common(k)]
        words = self._sorted.get(id(table))
        if words is None:  # the table's words in alphabetical order: a prefix is a range of them
            words = self._sorted[id(table)] = sorted(table)
        lo = bisect.bisect_left(words, partial)
        hi = bisect.bisect_left(words, partial + "\U0010ffff")
        return heapq.nlargest(k, words[lo:hi], key=table.__getitem__)

    def suggest(self, words: list[str], partial: str, title: str | None) -> list[str]:
        prev = words[-1] if words else EOS
        known = self._memo.get((prev, partial))
        if known is None:
            known = self._memo[prev, partial] = self._suggest(prev, partial)
        return known

    def _suggest(self, prev: str, partial: str) -> list[str]:
        out = self._top(self.follow.get(prev, Counter()), partial, 5)
        for w in self._top(self.unigram, partial, 10):
            if len(out) >= 5:
                break
            if w not in out:
                out.append(w)
        return out


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--models", default="lstm,gru,student")
    parser.add_argument("--lines", type=int, default=4, help="paragraphs of the test split to type")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    texts = paragraphs(data, args.lines)
    chars = sum(len(w) + 1 for tokens, _ in texts for w in tokens)
    print(f"typing the first {len(texts)} paragraphs of WikiText-2 test ({chars:,} characters), "
          f"top-k suggestions after every key, {args.threads} thread(s)")
    rows = []
    t0 = time.perf_counter()
    bigram = Bigram(read_lines(split_path(data, "train")))
    build = time.perf_counter() - t0
    saved, rate = simulate(texts, bigram.suggest)
    rows.append(("bigram", "-", "-", saved, rate))
    for name in filter(None, args.models.split(",")):
        engine = Engine(load_model(Path(args.checkpoints) / name))
        for topic in ((False, True) if engine.supports_context else (False,)):
            for cache in ((False, True) if engine.cache_params else (False,)):
                saved, rate = simulate(texts, engine_suggest(engine, cache, topic))
                rows.append((name, "yes" if cache else "no", "yes" if topic else ("no" if engine.supports_context
                                                                                 else "n/a"), saved, rate))
    print(f"{'model':>8} {'cache':>6} {'topic':>6} " + " ".join(f"{'top-' + str(k):>7}" for k in KS)
          + f" {'suggestions/s':>14}")
    for name, cache, topic, saved, rate in rows:
        print(f"{name:>8} {cache:>6} {topic:>6} " + " ".join(f"{100 * saved[k]:6.1f}%" for k in KS)
              + f" {rate:14,.0f}")
    print(f"(keystroke savings = 1 - keys / characters; the bigram's counts took {build:.1f} s to build)")


if __name__ == "__main__":
    main()
