"""Scoring speed: one sentence per call vs one batched call, and the output layer's GFLOP/s vs torch.mm.

All figures come from this process, with the same model and thread count:
1. tokens/s of `Engine.score` on N WikiText-2 test sentences, one per call vs all in one call (ratio),
   and for a context model the batched call with a topic vs without (ratio);
2. the scoring kernel (`RNNLM.target_log_probs`, chunked logsumexp + gather) vs torch's own
   `AdaptiveLogSoftmaxWithLoss.forward` on the same rows (ratio);
3. the output layer's achieved GFLOP/s vs `torch.mm` at the same shapes (fraction): for a full-softmax
   model of the same sizes (random weights: speed does not depend on them), and for the adaptive
   softmax per cluster (head for every row, each tail only for its rows).

    python bench/scoring.py --checkpoints checkpoints --model lstm --sentences 1000
"""
from __future__ import annotations

from pathlib import Path

import torch
from benchlib import load_bench_model, median_seconds, model_parser, test_sentences
from torch import nn

from models.engine import Engine
from models.rnnlm import RNNLM, ModelConfig, picked_log_probs


def mm_seconds(shapes: list[tuple[int, int, int]], repeat: int) -> float:
    """Time of torch.mm over each (m, k, n) shape, summed."""
    mats = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes if m]
    return median_seconds(lambda: [torch.mm(a, b) for a, b in mats], repeat)


def linear_flops(layer: nn.Module, rows: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Matmul FLOPs of a Linear (or an adaptive tail: Linear -> Linear) on `rows` rows, and the shapes."""
    linears = list(layer) if isinstance(layer, nn.Sequential) else [layer]
    shapes = [(rows, m.in_features, m.out_features) for m in linears]
    return sum(2 * m * k * n for m, k, n in shapes), shapes


def report_layer(name: str, layer: nn.Module, x: torch.Tensor, cols: torch.Tensor,
                 repeat: int) -> tuple[int, float, float]:
    """Print and return (matmul FLOPs, seconds of the chunked layer, seconds of torch.mm at its shapes)."""
    flops, shapes = linear_flops(layer, x.shape[0])
    t = median_seconds(lambda: picked_log_probs(layer, x, cols, None), repeat)
    t_mm = mm_seconds(shapes, repeat)
    shape_txt = " + ".join(f"[{m}x{k}]@[{k}x{n}]" for m, k, n in shapes)
    print(f"  {name:<10} {shape_txt:<40} {flops / t / 1e9:7.1f} GFLOP/s   torch.mm {flops / t_mm / 1e9:7.1f} GFLOP/s"
          f"   fraction {t_mm / t:5.2f}")
    return flops, t, t_mm


@torch.inference_mode()
def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--sentences", type=int, default=1000, help="sentences scored in one batched call")
    parser.add_argument("--single", type=int, default=300, help="of those, how many are scored one per call")
    parser.add_argument("--rows", type=int, default=4096, help="feature rows for the output-layer figures")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--context", default="Valkyria Chronicles III", help="topic for the with-context figure ('' = none)"
    )
    args = parser.parse_args()
    engine = Engine(load_bench_model(args), state_cache_bytes=0)
    c = engine.model.config
    sentences = test_sentences(Path(args.data), args.sentences)
    print(f"model {args.model}: {c.arch} {c.layers}x{c.hidden}, vocab {c.vocab_size:,}, "
          f"{'adaptive softmax ' + str(c.cutoffs) if c.adaptive else 'full softmax'}; "
          f"{args.threads} thread(s), torch {torch.__version__}")

    # 1. one sentence per call vs one batched call
    single = sentences[: args.single]
    n_single = sum(s.num_tokens for s in engine.score(single))
    n_all = sum(s.num_tokens for s in engine.score(sentences))
    t_single = median_seconds(lambda: [engine.score([s]) for s in single], 1)
    t_batch = median_seconds(lambda: engine.score(sentences), args.repeat)
    one, many = n_single / t_single, n_all / t_batch
    print(f"\nscoring WikiText-2 test sentences ({len(sentences)}, {n_all / len(sentences):.1f} tokens each)")
    print(f"  one per call  {one:9,.0f} tokens/s   ({len(single)} calls)")
    print(f"  batched       {many:9,.0f} tokens/s   (1 call)")
    print(f"  ratio         {many / one:9.2f}x  (target >= 5x)")
    if engine.supports_context and args.context:
        # a topic's boost also needs p(title word) at every position, so its words' tail clusters
        t_ctx = median_seconds(lambda: engine.score(sentences, context=args.context), args.repeat)
        print(f"  batched, with context {args.context!r}: {n_all / t_ctx:,.0f} tokens/s "
              f"({t_batch / t_ctx:.2f}x the speed without)")

    # 2 and 3: the output layer on `rows` rows with the corpus' own target distribution
    ids = [i for s in sentences for i in engine.tokenizer.encode(s).ids]
    while len(ids) < args.rows:
        ids = ids * 2
    targets = torch.tensor(ids[: args.rows])
    torch.manual_seed(0)
    width = engine.model.proj.out_features if engine.model.proj is not None else c.hidden
    feats = torch.randn(args.rows, width)

    full = RNNLM(ModelConfig(vocab_size=c.vocab_size, emb=c.emb, hidden=width, layers=1, adaptive=False)).eval()
    print(f"\nfull-softmax output layer ({args.rows} rows x {width} -> {c.vocab_size:,}; target-only "
          "logsumexp + gather, chunked)")
    report_layer("decoder", full.decoder, feats, targets, args.repeat)

    if engine.model.softmax is not None:
        sm = engine.model.softmax
        ours = median_seconds(lambda: engine.model.target_log_probs(feats, targets), args.repeat)
        theirs = median_seconds(lambda: sm(feats, targets).output, args.repeat)
        print(f"\nadaptive softmax, target log-probs of {args.rows} rows")
        print(f"  torch AdaptiveLogSoftmaxWithLoss.forward {args.rows / theirs:9,.0f} rows/s")
        print(f"  RNNLM.target_log_probs (chunked)         {args.rows / ours:9,.0f} rows/s   "
              f"ratio {theirs / ours:.2f}x")
        print("  per cluster (each tail only sees the rows whose target is in it):")
        bounds = sm.cutoffs
        cluster = torch.bucketize(targets, torch.tensor(bounds[:-1]), right=True)
        head_col = torch.where(cluster == 0, targets, sm.shortlist_size + cluster - 1)
        parts = [report_layer("head", sm.head, feats, head_col, args.repeat)]
        for i in range(1, len(bounds)):
            rows = (cluster == i).nonzero().squeeze(1)
            share = rows.numel() / args.rows
            parts.append(report_layer(f"tail {i} {share:4.0%}", sm.tail[i - 1], feats[rows],
                                      targets[rows] - bounds[i - 1], args.repeat))
        flops, t, t_mm = (sum(p[j] for p in parts) for j in range(3))
        print(f"  {'all':<51}{flops / t / 1e9:7.1f} GFLOP/s   torch.mm {flops / t_mm / 1e9:7.1f} GFLOP/s"
              f"   fraction {t_mm / t:5.2f}")


if __name__ == "__main__":
    main()
