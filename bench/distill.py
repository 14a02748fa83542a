"""Teacher vs distilled student vs the same student trained from scratch.

Prints, for each model: parameters, WikiText-2 test perplexity (with the true article title as
context and without, for context models) and scoring throughput (tokens/s of `Engine.score` on
test sentences, measured in this run), plus the student/teacher ratios.

    python bench/distill.py --teacher checkpoints/lstm --student checkpoints/student \
        --scratch /path/to/student-scratch --data ../shared/data/wikitext-2
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from models.checkpoint import load_model
from models.data import encode_lines, read_lines
from models.engine import Engine
from models.evaluate import evaluate_stream


def scoring_throughput(engine: Engine, lines: list[str], batch: int, repeats: int) -> float:
    engine.score(lines[:batch])  # warm-up
    best = 0.0
    for _ in range(repeats):
        tokens, start = 0, time.perf_counter()
        for i in range(0, len(lines), batch):
            tokens += sum(r.num_tokens for r in engine.score(lines[i:i + batch]))
        best = max(best, tokens / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="checkpoints/lstm")
    parser.add_argument("--student", default="checkpoints/student")
    parser.add_argument("--scratch", default=None, help="the same student architecture trained without a teacher")
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    parser.add_argument("--sentences", type=int, default=1000, help="test lines used for the throughput")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lines = read_lines(Path(args.data) / "test.txt")
    sentences = [line for line in lines if line.strip() and not line.strip().startswith("=")][: args.sentences]
    rows = []
    for role, folder in (("teacher", args.teacher), ("student (distilled)", args.student),
                         ("student (scratch)", args.scratch)):
        if folder is None:
            continue
        loaded = load_model(folder)
        stream = encode_lines(lines, loaded.tokenizer.vocab, titles=loaded.config.context)
        with_ctx = evaluate_stream(loaded.model, stream, use_context=True).perplexity
        without = evaluate_stream(loaded.model, stream, use_context=False).perplexity
        tps = scoring_throughput(Engine(loaded), sentences, args.batch, args.repeats)
        rows.append((role, loaded.name, loaded.model.num_parameters(), with_ctx if loaded.config.context else None,
                     without, tps))

    print(f"WikiText-2 test ({sum(len(line.split()) + 1 for line in lines):,} tokens); throughput: "
          f"Engine.score on {len(sentences)} test sentences, batch {args.batch}, {args.threads} threads")
    print("| model | name | parameters | test ppl (title context) | test ppl (no context) | scoring tokens/s |")
    print("|---|---|---:|---:|---:|---:|")
    for role, name, params, ctx, plain, tps in rows:
        ctx_s = f"{ctx:.2f}" if ctx is not None else "n/a"
        print(f"| {role} | {name} | {params:,} | {ctx_s} | {plain:.2f} | {tps:,.0f} |")
    teacher = rows[0]
    for role, _, params, ctx, plain, tps in rows[1:]:
        best_t = teacher[3] or teacher[4]
        best_s = ctx or plain
        print(f"{role}: {params / teacher[2]:.2f}x the teacher's parameters, {tps / teacher[5]:.2f}x its scoring "
              f"throughput, perplexity {100 * (best_s / best_t - 1):+.1f}% vs the teacher")


if __name__ == "__main__":
    main()
