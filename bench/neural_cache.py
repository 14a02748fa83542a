"""WikiText-2 test perplexity without and with a model's neural cache, and what the cache costs.

Perplexity: one pass over the whole test split (read as one document, titles as context like
`rnnlm eval`) gives the model's log-probabilities and the features the cache reads, so both numbers come
from the same run. Cost: `rnnlm eval` (evaluate_stream) against `rnnlm eval --cache` (evaluate_with_cache)
on the first --time-lines lines, alternating, median of --rounds; the ratio is what the cache costs.

    python bench/neural_cache.py --model lstm
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchlib import load_bench_model, model_parser
from models.data import encode_lines, read_lines, split_path
from models.evaluate import evaluate_stream
from models.neural_cache import (
    CacheParams,
    document_log_probs,
    evaluate_with_cache,
    perplexity,
    stream_features,
)


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--time-lines", type=int, default=600, help="test lines the timing runs over")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (median)")
    args = parser.parse_args()
    loaded = load_bench_model(args)
    params = CacheParams.from_meta(loaded.meta)
    if params is None:
        sys.exit(f"{args.model} has no fitted cache: run rnnlm fit-cache first")
    lines = read_lines(split_path(Path(args.data), "test"))
    vocab, context = loaded.tokenizer.vocab, loaded.config.context
    stream = encode_lines(lines, vocab, titles=context)
    data = stream_features(loaded.model, stream, use_context=context)
    without = perplexity(data.model_lp)
    with_cache = perplexity(document_log_probs(data.feats, data.targets, data.model_lp, params))
    print(f"{args.model}: WikiText-2 test, {stream.ids.numel():,} tokens; cache theta {params.theta} "
          f"lambda {params.lam} window {params.window}")
    print(f"  perplexity without cache {without:8.2f}")
    print(f"  perplexity with cache    {with_cache:8.2f}   ({100 * (1 - with_cache / without):.1f} % lower)")

    part = encode_lines(lines[: args.time_lines], vocab, titles=context)
    plain_s, cache_s = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        evaluate_stream(loaded.model, part, use_context=context)
        plain_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        evaluate_with_cache(loaded.model, part, params, use_context=context)
        cache_s.append(time.perf_counter() - t0)
    plain, cached = statistics.median(plain_s), statistics.median(cache_s)
    n = part.ids.numel()
    print(f"  time over {n:,} tokens ({args.rounds} alternating rounds, median, {args.threads} thread(s)): "
          f"plain {plain:.2f} s ({n / plain:,.0f} tok/s), with cache {cached:.2f} s ({n / cached:,.0f} tok/s): "
          f"{cached / plain:.2f}x")


if __name__ == "__main__":
    main()
