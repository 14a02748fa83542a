"""GPU against CPU on one model: training and scoring tokens/s, next-word and 64-text scoring latency.

Each figure is measured on the CPU and on the GPU in the same run (the GPU rows are left out where
CUDA is missing) and printed as one table with the ratio. Training runs the trainer's step (RNNLM.forward,
Adam, clipping) on batches of 64 x 35 tokens; scoring and next-word go through the engine as the server
does (on CUDA with its recurrent layers in bf16, or fp16, unless --serve-dtype says otherwise).

    python bench/device_speed.py --checkpoints checkpoints --model lstm --data ../shared/data/wikitext-2
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from models.checkpoint import LoadedModel, load_model
from models.data import batchify, read_lines, tbptt_windows
from models.device import autocast, describe, place_model, resolve_device, synchronize
from models.engine import Engine
from models.rnnlm import RNNLM, detach_state


def sentences(args: argparse.Namespace, loaded: LoadedModel, n: int) -> tuple[list[str], str]:
    """WikiText-2 test sentences when the corpus is there, else random words of the model's vocabulary."""
    test = Path(args.data) / "test.txt"
    if test.is_file():
        lines = [line.strip() for line in read_lines(test) if line.strip() and not line.strip().startswith("=")]
        return lines[:n], f"{min(n, len(lines))} WikiText-2 test lines"
    words = [w for w in loaded.tokenizer.vocab.itos[:5000] if not w.startswith("<")]
    rng = random.Random(0)
    return [" ".join(rng.choices(words, k=rng.randint(10, 45))) for _ in range(n)], \
        f"{n} lines of random vocabulary words (no corpus at {args.data})"


def train_tokens_per_s(loaded: LoadedModel, device: torch.device, amp: str, ids: torch.Tensor, steps: int) -> float:
    model = RNNLM(loaded.config)
    model.load_state_dict(loaded.model.state_dict())
    place_model(model, device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = batchify(ids, 64).to(device)
    windows = tbptt_windows(data, data, 35)
    state = model.init_state(64)
    warmup = 3
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        inputs, targets, _ = next(windows)
        with autocast(device, amp):
            loss, state = model(inputs, detach_state(state), targets=targets)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
    synchronize(device)
    return steps * 64 * 35 / (time.perf_counter() - start)


def p50_ms(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(args: argparse.Namespace, device: torch.device, texts: list[str], ids: torch.Tensor) -> dict:
    out = {}
    steps = args.gpu_steps if device.type == "cuda" else args.cpu_steps
    out["train fp32"] = train_tokens_per_s(load_model(args.folder), device, "none", ids, steps)
    if device.type == "cuda":
        out["train bf16"] = train_tokens_per_s(load_model(args.folder), device, "bf16", ids, steps)
    engine = Engine(load_model(args.folder), state_cache_bytes=0, device=device, dtype=args.serve_dtype)
    out["dtype"] = str(engine.dtype).removeprefix("torch.")
    engine.score(texts[:64])  # warm-up (cuDNN plans, allocator)
    synchronize(device)
    t0 = time.perf_counter()
    scored = engine.score(texts)
    synchronize(device)
    out["score"] = sum(s.num_tokens for s in scored) / (time.perf_counter() - t0)
    batch = texts[:64]
    out["score64"] = p50_ms(lambda: engine.score(batch), args.repeats, device)
    typing = Engine(load_model(args.folder), device=device, dtype=args.serve_dtype)  # with the state cache
    words = " ".join(texts[:10]).split()[:args.words]
    typing.next_word("The", k=5)
    times = []
    for i in range(1, len(words) + 1):
        prefix = " ".join(words[:i]) + " "
        times.append(p50_ms(lambda: typing.next_word(prefix, k=5), 1, device))  # noqa: B023 (called here)
    out["next"] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", default="checkpoints")
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--cpu-steps", type=int, default=10)
    parser.add_argument("--gpu-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20, help="64-text scoring calls timed")
    parser.add_argument("--words", type=int, default=100, help="keystrokes (words typed) timed for next-word")
    parser.add_argument("--serve-dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.folder = Path(args.checkpoints) / args.model
    loaded = load_model(args.folder)
    texts, what = sentences(args, loaded, args.sentences)
    ids = torch.tensor([i for t in texts for i in loaded.tokenizer.encode(t).ids], dtype=torch.long)
    needed = 64 * 35 * (max(args.cpu_steps, args.gpu_steps) + 4) + 64
    ids = ids.repeat(needed // ids.numel() + 1)  # enough training windows for the longest run
    devices = [torch.device("cpu")] + ([resolve_device("cuda")] if torch.cuda.is_available() else [])
    c = loaded.config
    print(f"model {args.model}: {c.arch} {c.layers}x{c.hidden}, emb {c.emb}, vocab {c.vocab_size:,}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} CPU thread(s); {what}")
    print("devices: " + ", ".join(describe(d) for d in devices))
    results = {d: measure(args, d, texts, ids) for d in devices}
    cpu = results[devices[0]]
    gpu = results[devices[1]] if len(devices) > 1 else None
    rows = [("train tokens/s, fp32", "train fp32", "higher"), ("train tokens/s, bf16 autocast", "train bf16", "higher"),
            (f"score tokens/s ({len(texts)} texts, one call)", "score", "higher"),
            ("score 64 texts, p50 ms", "score64", "lower"), ("next-word p50 ms (state cache on)", "next", "lower")]
    gpu_name = f"{devices[1]} ({gpu['dtype']} serving)" if gpu else "cuda (none here)"
    print(f"{'measure':<40}{'cpu':>14}{gpu_name:>28}{'GPU vs CPU':>14}")
    for label, key, better in rows:
        a, b = cpu.get(key), gpu.get(key) if gpu else None
        fmt = (lambda v: f"{v:,.0f}") if better == "higher" else (lambda v: f"{v:.2f}")
        ratio = "" if a is None or b is None else f"{(b / a if better == 'higher' else a / b):.1f}x"
        print(f"{label:<40}{fmt(a) if a is not None else '-':>14}{fmt(b) if b is not None else '-':>28}{ratio:>14}")
    if gpu is None:
        print("no CUDA device: the GPU column is empty (run bench/device_check.sh on a GPU machine)")
    else:
        print("GPU vs CPU: throughput GPU / CPU, latency CPU / GPU (above 1: the GPU is faster)")


if __name__ == "__main__":
    main()
