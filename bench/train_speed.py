"""Training throughput: our trainer's step vs a PyTorch-example-style step on the same model size.

Baseline = the `word_language_model` recipe: full softmax over the vocabulary, batch 20, BPTT 35,
plain SGD. Ours = adaptive softmax, batch 64, Adam. Both run the same LSTM on real WikiText-2
windows in this process, with the same thread count, and report tokens/s and the ratio.

    python bench/train_speed.py --data ../shared/data/wikitext-2 --steps 30
"""
from __future__ import annotations

import argparse
import time

import torch

from models.data import batchify, load_corpus, tbptt_windows
from models.rnnlm import RNNLM, ModelConfig, detach_state


def tokens_per_second(model: RNNLM, opt: torch.optim.Optimizer, ids: torch.Tensor, batch: int, steps: int,
                      warmup: int = 3) -> float:
    data = batchify(ids, batch)
    windows = tbptt_windows(data, data, 35)
    model.train()
    state = model.init_state(batch)
    tokens, start = 0, None
    for step in range(warmup + steps):
        inputs, targets, _ = next(windows)
        if step == warmup:
            start, tokens = time.perf_counter(), 0
        state = detach_state(state)
        loss, state = model(inputs, state, targets=targets)  # the trainer's step: RNNLM.forward
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        tokens += inputs.numel()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    parser.add_argument("--emb", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus(args.data, titles=False)
    V = len(corpus.vocab)
    size = dict(vocab_size=V, emb=args.emb, hidden=args.hidden, layers=args.layers, dropout=0.3)

    torch.manual_seed(0)
    baseline = RNNLM(ModelConfig(**size, adaptive=False))
    base_tps = tokens_per_second(baseline, torch.optim.SGD(baseline.parameters(), lr=20), corpus.train.ids, 20,
                                 args.steps)
    torch.manual_seed(0)
    ours = RNNLM(ModelConfig(**size, adaptive=True, cutoffs=[2000, 10000]))
    ours_tps = tokens_per_second(ours, torch.optim.Adam(ours.parameters(), lr=2e-3), corpus.train.ids, 64,
                                 args.steps)
    print(f"model: LSTM {args.layers}x{args.hidden}, emb {args.emb}, |V| {V:,}, threads {args.threads}")
    print(f"{'trainer':<44}{'tokens/s':>12}")
    print(f"{'example-style (full softmax, batch 20, SGD)':<44}{base_tps:>12,.0f}")
    print(f"{'rnnlm (adaptive softmax, batch 64, Adam)':<44}{ours_tps:>12,.0f}")
    print(f"speed-up: {ours_tps / base_tps:.1f}x")


if __name__ == "__main__":
    main()
