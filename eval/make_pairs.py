"""Write eval/data/wikitext2_pairs.jsonl: minimal pairs from the WikiText-2 test split.

Each line holds a test sentence (`good`) and the same sentence with two neighbouring words swapped
(`bad`); a language model should give the first the higher log-probability. The sentences are taken
as the corpus writes them (already tokenised), so the Hugging Face tokenizer of models/hf_tokenizer.py
splits them exactly as the server does. WikiText-2 is CC BY-SA 3.0, and so is the derived file.

    python eval/make_pairs.py --data ../shared/data/wikitext-2 --pairs 200
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RNNLM_TEST_DATA", REPO.parent / "shared" / "data")) / "wikitext-2"
OUT = REPO / "eval" / "data" / "wikitext2_pairs.jsonl"


def sentences(path: Path, min_words: int = 6, max_words: int = 20) -> list[str]:
    """Sentences of the split's paragraphs (headings skipped) without <unk>, cut after each " . "."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        words: list[str] = []
        for word in line.split():
            words.append(word)
            if word == ".":
                if min_words <= len(words) <= max_words and "<unk>" not in words:
                    out.append(" ".join(words))
                words = []
    return out


def swap_neighbours(sentence: str, rng: random.Random) -> str | None:
    """The sentence with two different neighbouring words (before the final period) swapped."""
    words = sentence.split()
    spots = [i for i in range(len(words) - 2) if words[i] != words[i + 1]]
    if not spots:
        return None
    i = rng.choice(spots)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="WikiText-2 folder (with test.txt)")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    pool = sentences(args.data / "test.txt")
    rng.shuffle(pool)
    rows = []
    for good in pool:
        bad = swap_neighbours(good, rng)
        if bad is not None:
            rows.append({"id": len(rows), "good": good, "bad": bad})
        if len(rows) == args.pairs:
            break
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} pairs from {len(pool)} sentences -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
