"""Minimal pairs that differ in an unknown word: how often a model prefers the real sentence.

Each of the first --sentences sentences of WikiText-2 test gets one word (a vocabulary word of letters,
chosen with a fixed seed) replaced by an invented word of the same length and capitalisation. The
model is right when the real sentence has the higher log-probability. Scored with `<unk>` as a word
(the published convention) and with open-vocabulary scoring (models.oov), by word frequency class.

    python bench/oov_pairs.py --model lstm
"""
from __future__ import annotations

import random
import string
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchlib import load_bench_model, model_parser, test_sentences
from models.engine import Engine
from models.rnnlm import RNNLM


def invent(word: str, vocab, rng: random.Random) -> str:
    """A string of letters of the word's length and capitalisation that is not in the vocabulary."""
    while True:
        new = "".join(rng.choice(string.ascii_lowercase) for _ in word)
        if word[0].isupper():
            new = new.capitalize()
        if new not in vocab:
            return new


def class_name(model: RNNLM, word_id: int) -> str:
    cutoffs = model.config.cutoffs
    if word_id < cutoffs[0]:
        return f"frequent (top {cutoffs[0]:,})"
    return "rare" if len(cutoffs) < 2 or word_id >= cutoffs[1] else f"mid ({cutoffs[0]:,}-{cutoffs[1]:,})"


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    engine = Engine(load_bench_model(args))
    vocab = engine.vocab
    rng = random.Random(args.seed)
    real, fake, classes = [], [], []
    for sentence in test_sentences(Path(args.data), args.sentences):
        words = sentence.split()
        spots = [i for i, w in enumerate(words) if w.isalpha() and w in vocab]
        if not spots:
            continue
        i = rng.choice(spots)
        classes.append(class_name(engine.model, vocab.stoi[words[i]]))
        real.append(sentence)
        fake.append(" ".join(words[:i] + [invent(words[i], vocab, rng)] + words[i + 1:]))
    print(f"{args.model}: {len(real):,} minimal pairs from WikiText-2 test (one word replaced by an invented one)")
    print(f"{'convention':>12} {'all':>7} " + " ".join(f"{c:>22}" for c in sorted(set(classes))))
    for convention in ("unk-word", "open-vocab"):
        right = [r.logprob > f.logprob for r, f in zip(engine.score(real, oov_convention=convention),
                                                      engine.score(fake, oov_convention=convention))]
        by_class = {c: [ok for ok, k in zip(right, classes) if k == c] for c in sorted(set(classes))}
        print(f"{convention:>12} {100 * sum(right) / len(right):6.1f}% "
              + " ".join(f"{100 * sum(v) / len(v):13.1f}% of {len(v):>4}" for v in by_class.values()))


if __name__ == "__main__":
    main()
