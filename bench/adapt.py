"""Adapting the shipped lstm to a new domain: Penn Treebank (Wall Street Journal text) as the user's text.

Rows: the shipped `lstm` as is; adapted to PTB with the `adapt` preset (`--init lstm --preset adapt`),
without and with vocabulary extension (`--extend-vocab`); an lstm of the same size trained from
scratch on PTB. Every training row gets the same wall-clock budget, turned into a budget in tokens
per row: each row's training speed is measured first (a short calibration run, same process, same
threads), and a row trains on speed x budget tokens (whole epochs of PTB train while they fit, then
a prefix of it). The PTB text goes through `models.dataset` like an upload (normalised with the lstm's
WikiText tokenizer; PTB's own `<unk>` and `N` stay tokens).

Perplexity convention: the vocabularies differ (WikiText's 33k, plus PTB words when extended; PTB's
10k from scratch), so every model reads the whole PTB test text with its own vocabulary, and the
perplexity counts only the positions whose word every row knows (not `<unk>`): the same tokens for
every row, each a real word every model can name. A model with a larger vocabulary spreads its mass
over more words, so this does not favour it. Keystroke savings: each word of the first `--lines` PTB
test lines is typed letter by letter; as soon as it is among the top-3 words that start with what is
typed (specials excluded), one key accepts it; the space after a word is one key either way.

    python bench/adapt.py --budget-s 300 --threads 1
"""
from __future__ import annotations

import argparse
import bisect
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from models import dataset
from models.checkpoint import LoadedModel, load_model
from models.config import TrainConfig
from models.data import SPLITS, read_lines
from models.rnnlm import detach_state
from models.tokenizer import EOS, UNK
from models.train import EpochReport, train

ROOT = Path(__file__).resolve().parent.parent


def calibrate(cfg: TrainConfig, tokens: int) -> float:
    """Training tokens per second of `cfg` over its first `tokens` training tokens."""
    seen: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = TrainConfig(**{**cfg.__dict__, "out": f"{tmp}/model", "run_dir": f"{tmp}/run", "epochs": 1,
                               "train_tokens": tokens, "valid_tokens": 2000})
        train(probe, progress=False, on_epoch=lambda r: seen.append(r.tokens_per_s))
    return seen[0]


def budgeted(cfg: TrainConfig, budget_tokens: int, train_size: int) -> TrainConfig:
    """`cfg` training on about `budget_tokens`: whole epochs of the corpus while they fit, else a prefix."""
    epochs = max(1, budget_tokens // train_size)
    return TrainConfig(**{**cfg.__dict__, "epochs": epochs, "train_tokens": min(train_size, budget_tokens // epochs)})


@torch.inference_mode()
def token_log_probs(loaded: LoadedModel, lines: list[str], rows: int = 16, window: int = 256) -> torch.Tensor:
    """log p of every token of `lines` as one stream (an <eos> after each line), in stream order."""
    model, vocab = loaded.model, loaded.tokenizer.vocab
    model.eval()
    ids = torch.tensor([vocab.stoi.get(t, vocab.unk) for line in lines for t in line.split() + [EOS]])
    n = ids.numel()
    inputs = torch.cat([ids.new_tensor([vocab.eos]), ids[:-1]])
    length = math.ceil(n / rows)
    pad = rows * length - n
    x = torch.cat([inputs, inputs.new_zeros(pad)]).view(rows, length)
    y = torch.cat([ids, ids.new_zeros(pad)]).view(rows, length)
    out = torch.empty(rows, length)
    state = None
    for start in range(0, length, window):
        sl = slice(start, start + window)
        feats, state = model.features(x[:, sl], state)
        state = detach_state(state)
        out[:, sl] = model.target_log_probs(feats, y[:, sl])
    return out.view(-1)[:n]


class Prefixes:
    """The vocabulary ids of the words starting with a prefix (a sorted word list and bisect)."""

    def __init__(self, itos: list[str]) -> None:
        order = sorted((w, i) for i, w in enumerate(itos) if w not in (UNK, EOS))
        self.words = [w for w, _ in order]
        self.ids = torch.tensor([i for _, i in order])

    def __call__(self, prefix: str) -> torch.Tensor:
        lo = bisect.bisect_left(self.words, prefix)
        hi = bisect.bisect_left(self.words, prefix + "\U0010ffff")
        return self.ids[lo:hi]


@torch.inference_mode()
def keystrokes(loaded: LoadedModel, lines: list[str], k: int = 3) -> tuple[int, int]:
    """(keys pressed, keys of the text) typing `lines` with top-k word suggestions."""
    model, vocab = loaded.model, loaded.tokenizer.vocab
    model.eval()
    prefixes = Prefixes(vocab.itos)
    pressed = total = 0
    for line in lines:
        words = line.split()
        ids = torch.tensor([[vocab.eos] + [vocab.stoi.get(w, vocab.unk) for w in words[:-1]]])
        feats, _ = model.features(ids)
        logp = model.log_probs(feats)[0]
        for pos, word in enumerate(words):
            total += len(word) + 1
            cost = len(word)
            if word in vocab.stoi and word != UNK:
                scores, target = logp[pos], logp[pos, vocab.stoi[word]]
                for typed in range(len(word) - 1):  # accepting after the whole word saves nothing
                    if (scores[prefixes(word[:typed])] > target).sum().item() < k:
                        cost = typed + 1
                        break
            pressed += cost + 1
    return pressed, total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ptb"), help="PTB folder (ptb.*.txt)")
    p.add_argument("--base", default=str(ROOT / "checkpoints" / "lstm"))
    p.add_argument("--budget-s", type=float, default=300.0, help="training wall clock per row (seconds)")
    p.add_argument("--extend", type=int, default=2000, help="--extend-vocab of the extended row")
    p.add_argument("--min-count", type=int, default=3)
    p.add_argument("--lines", type=int, default=300, help="PTB test lines typed for the keystroke savings")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="keep the dataset and the trained models here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rnnlm-adapt-"))
    base = load_model(args.base)
    data = Path(args.data)
    files = {s: next(data.glob(f"*{s}.txt")) for s in SPLITS}
    ds = dataset.get(work / "datasets", "ptb") if (work / "datasets" / "ptb").exists() else dataset.from_files(
        work / "datasets", "ptb", files, base.tokenizer.style, vocabs={"lstm": base.tokenizer.vocab}, source="ptb")
    train_size = sum(len(line.split()) + 1 for line in read_lines(ds.path / "train.txt"))
    print(f"dataset {ds.path}: {ds.info['tokens']} tokens, {ds.info['unknown']['lstm']['tokens']:.1%} of them "
          f"unknown to the lstm (PTB's own <unk> included)", flush=True)
    common = dict(data=str(ds.path), valid_tokens=20_000, seed=1234)
    rows = {
        "adapted": TrainConfig(out=str(work / "adapted"), init=args.base, preset="adapt", **common),
        "adapted + vocab": TrainConfig(out=str(work / "adapted-vocab"), init=args.base, preset="adapt",
                                       extend_vocab=args.extend, min_count=args.min_count, **common),
        "scratch": TrainConfig(out=str(work / "scratch"), emb=base.config.emb, hidden=base.config.hidden,
                               layers=base.config.layers, cutoffs=[2000, 6000], style=base.tokenizer.style,
                               **common),
    }
    from models.adapt import with_preset
    rows = {name: with_preset(cfg) for name, cfg in rows.items()}
    # every row's speed first, back to back, so that they are measured under the same load
    speeds = {name: calibrate(cfg, 64 * 35 * 20) for name, cfg in rows.items()}
    trained: dict[str, tuple[Path, int, float, float]] = {}
    for name, cfg in rows.items():
        speed = speeds[name]
        budget = int(speed * args.budget_s)
        run = budgeted(cfg, budget, train_size)
        run.run_dir = str(work / "runs" / Path(run.out).name)
        t0 = time.perf_counter()
        epochs: list[EpochReport] = []
        train(run, progress=False, overwrite=True, on_epoch=epochs.append)
        seconds = time.perf_counter() - t0
        trained[name] = (Path(run.out), run.epochs * run.train_tokens, speed, seconds)
        print(f"{name}: {speed:,.0f} tok/s -> budget {budget:,} tokens = {run.epochs} epoch(s) x "
              f"{run.train_tokens:,}; trained {len(epochs)} epoch(s) in {seconds:.0f} s (with validation)", flush=True)
    models = {"lstm (shipped)": base, **{name: load_model(path) for name, (path, *_rest) in trained.items()}}
    test = read_lines(ds.path / "test.txt")
    tokens = [t for line in test for t in line.split() + [EOS]]
    known = torch.tensor([t != UNK and all(t in m.tokenizer.vocab.stoi for m in models.values()) for t in tokens])
    typed = [line for line in test if line.split()][: args.lines]
    print(f"\nPTB test: {len(tokens):,} tokens, {known.float().mean().item():.1%} of them known to every row "
          f"(perplexity over those); keystrokes over the first {len(typed)} lines; {args.threads} thread(s), "
          f"training budget {args.budget_s:.0f} s per row\n")
    print(f"{'model':>16} {'vocab':>7} {'train tokens':>13} {'tok/s':>7} {'train s':>8} {'PTB test ppl':>13} "
          f"{'keystrokes saved (top-3)':>26}")
    results = {}
    for name, loaded in models.items():
        logp = token_log_probs(loaded, test)
        ppl = math.exp(-logp[known].double().mean().item())
        pressed, total = keystrokes(loaded, typed)
        saved = 1 - pressed / total
        results[name] = (ppl, saved)
        _, budget_tokens, speed, seconds = trained.get(name, (None, 0, 0.0, 0.0))
        print(f"{name:>16} {len(loaded.tokenizer.vocab):>7,} {budget_tokens:>13,} {speed:>7,.0f} {seconds:>8.0f} "
              f"{ppl:>13.2f} {total - pressed:>10,} of {total:,} ({saved:.1%})", flush=True)
    best = min(("adapted", "adapted + vocab"), key=lambda n: results[n][0])
    for other in ("lstm (shipped)", "scratch"):
        print(f"{best} vs {other}: perplexity {results[best][0] / results[other][0]:.2f}x, "
              f"keystrokes saved {100 * (results[best][1] - results[other][1]):+.1f} points")
    print(f"models in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
