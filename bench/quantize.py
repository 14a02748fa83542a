"""Dynamic int8 quantisation: speed and perplexity change against the fp32 model, in the same run.

`torch.ao.quantization.quantize_dynamic` on nn.Linear + nn.LSTM/GRU (models/quantize.py). Inside
an adaptive softmax the head and both projections of every tail cluster are nn.Linear, so they are
quantised too (listed below); the embedding stays fp32. Perplexity is the whole WikiText-2 test
set (or --tokens of it) through `models.evaluate.evaluate_stream`, the same path as `rnnlm eval`.
Rule: int8 may be a default only if perplexity changes by less than 1 %. Also printed: how much a
sentence's score depends on the other sentences in its batch (dynamic quantisation picks activation
scales per batch), which matters because the micro-batcher mixes unrelated requests.

    python bench/quantize.py --checkpoints checkpoints --model lstm
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from benchlib import load_bench_model, median_seconds, model_parser, test_sentences

from models.data import encode_lines, read_lines
from models.engine import Engine
from models.evaluate import evaluate_stream


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--tokens", type=int, default=None, help="only the first N test tokens (default: all)")
    parser.add_argument("--sentences", type=int, default=500, help="sentences for the scoring speed")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    loaded = load_bench_model(args)
    engines = {"fp32": Engine(loaded, state_cache_bytes=0), "int8": Engine(loaded, state_cache_bytes=0,
                                                                            quantize="int8")}
    swapped = Counter(type(m).__name__ for name, m in engines["int8"].model.named_modules()
                      if "quantized" in type(m).__module__)
    print(f"model {args.model}: {loaded.config.arch} {loaded.config.layers}x{loaded.config.hidden}, "
          f"vocab {loaded.config.vocab_size:,}, adaptive softmax {loaded.config.adaptive}; {args.threads} thread(s)")
    print("quantised modules: " + ", ".join(f"{n} x {k}" for k, n in swapped.items()))
    if loaded.config.adaptive:
        sm = engines["int8"].model.softmax
        print(f"  adaptive softmax: head -> {type(sm.head).__name__}, tails -> "
              + ", ".join("[" + " -> ".join(type(m).__name__ for m in tail) + "]" for tail in sm.tail))

    lines = read_lines(Path(args.data) / "test.txt")
    stream = encode_lines(lines, loaded.tokenizer.vocab, titles=loaded.config.context, max_tokens=args.tokens)
    sentences = test_sentences(Path(args.data), args.sentences)
    prefix = " ".join(" ".join(sentences).split()[:50]) + " "
    rows = {}
    for name, engine in engines.items():
        score = evaluate_stream(engine.model, stream, use_context=True)
        n_tok = sum(s.num_tokens for s in engine.score(sentences))
        t_score = median_seconds(lambda: engine.score(sentences), args.repeat)  # noqa: B023 (called here)
        t_next = median_seconds(lambda: engine.next_word(prefix), 10 * args.repeat)  # noqa: B023
        alone = [engine.score([s])[0].logprob for s in sentences[:32]]
        mixed = [r.logprob for r in engine.score(sentences[:32] + sentences[-32:])[:32]]
        drift = max(abs(a - b) for a, b in zip(alone, mixed))
        rows[name] = (score.perplexity, score.num_tokens / score.seconds, n_tok / t_score, t_next * 1e3, drift)
    print(f"\nWikiText-2 test: {stream.ids.numel():,} tokens (perplexity, whole stream); "
          f"scoring speed on {len(sentences)} sentences in one call; next-word at a 50-word prefix, cache off")
    print("batch dependence: max |log p(sentence) alone - log p(sentence) batched with 63 others| over 32 "
          "sentences, nats")
    print(f"  {'':5} {'perplexity':>11} {'eval tok/s':>11} {'score tok/s':>12} {'next-word ms':>13} "
          f"{'batch dependence':>17}")
    for name, (ppl, eval_tps, score_tps, next_ms, drift) in rows.items():
        print(f"  {name:5} {ppl:11.2f} {eval_tps:11,.0f} {score_tps:12,.0f} {next_ms:13.2f} {drift:17.1e}")
    (p32, e32, s32, n32, _), (p8, e8, s8, n8, drift8) = rows["fp32"], rows["int8"]
    change = (p8 - p32) / p32
    print(f"  int8 / fp32: perplexity {change:+.2%}, eval speed {e8 / e32:.2f}x, scoring speed {s8 / s32:.2f}x, "
          f"next-word latency {n8 / n32:.2f}x")
    verdict = "yes" if abs(change) < 0.01 else "no"
    print(f"  perplexity change < 1 % (the bar for a default): {verdict}; scores independent of the batch: "
          f"{'yes' if drift8 < 1e-4 else 'no'} ({drift8:.2g} nats)")


if __name__ == "__main__":
    main()
