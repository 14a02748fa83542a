"""What the benchmarks share: the model/data flags, WikiText-2 test sentences, a median timer, a free port."""
from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from service.server import free_port  # noqa: F401 (the bench scripts take it from here)


def model_parser(doc: str, threads_help: str = "torch threads") -> argparse.ArgumentParser:
    """An argument parser with --checkpoints, --model, --data and --threads (the script adds its own flags)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--checkpoints", default="checkpoints")
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    return parser


def load_bench_model(args: argparse.Namespace):
    """Set the torch thread count from --threads and load the model named by --checkpoints/--model."""
    import torch

    from models.checkpoint import load_model
    torch.set_num_threads(args.threads)
    return load_model(Path(args.checkpoints) / args.model)


def test_sentences(data: Path, n: int) -> list[str]:
    """The first n sentences (3+ tokens) of WikiText-2 test, headings skipped."""
    out: list[str] = []
    for line in (Path(data) / "test.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        out += [s for s in re.split(r"(?<= \.) ", line) if len(s.split()) >= 3]
        if len(out) >= n:
            break
    return out[:n]


def median_seconds(func: Callable[[], object], repeat: int = 3) -> float:
    """Median wall time of `repeat` calls after one warm-up call."""
    func()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
