"""Processes x torch threads on this machine: which layout of `rnnlm serve` gives the most throughput.

Starts every layout at once (--layouts, PROCESSESxTHREADS: `1x1`, `2x1`, `1x2` by default; N processes
are N `rnnlm serve` on their own ports, each client's connection going to the next in turn, as the
kernel spreads connections over processes sharing a port), then drives them in interleaved rounds so
that the machine's other load falls on each alike: /v1/score with batches of 64 sentences from 1 and
from 8 clients (tokens/s), and one sentence per request from 32 clients (requests/s, errors).

    python bench/layout.py --checkpoints checkpoints --model lstm
"""
from __future__ import annotations

import asyncio
import sys
from contextlib import ExitStack
from pathlib import Path

from benchlib import model_parser, request_bytes, serve, test_sentences
from http_speed import Run, batches, drive


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--layouts", default="1x1,2x1,1x2", help="PROCESSESxTHREADS, comma-separated")
    parser.add_argument("--seconds", type=float, default=24, help="per layout and scenario, all rounds together")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not (Path(args.checkpoints) / args.model / "config.json").is_file():
        sys.exit(f"no model {args.model!r} in {args.checkpoints}")
    layouts = [tuple(int(x) for x in name.split("x")) for name in args.layouts.split(",")]
    sentences = test_sentences(Path(args.data), 2048)
    batched = [request_bytes("/v1/score", {"model": args.model, "texts": g, "details": False})
               for g in batches(sentences, 64)]
    single = [request_bytes("/v1/score", {"model": args.model, "texts": [s]}) for s in sentences]
    scenarios = (("batched, 1 client", batched, 1), ("batched, 8 clients", batched, 8),
                 ("single, 32 clients", single, 32))
    runs = {(layout, name): Run() for layout in layouts for name, _, _ in scenarios}
    with ExitStack() as stack:
        servers = {(p, t): [stack.enter_context(serve(args.checkpoints, args.model, t)) for _ in range(p)]
                   for p, t in layouts}
        for layout in layouts:  # warm-up
            for _name, payloads, clients in scenarios:
                asyncio.run(drive(servers[layout], payloads, clients, 1.0, Run()))
        for r in range(args.rounds):
            print(f"[round {r + 1}/{args.rounds}] ...", flush=True)
            for name, payloads, clients in scenarios:
                for layout in layouts:
                    asyncio.run(drive(servers[layout], payloads, clients, args.seconds / args.rounds,
                                      runs[layout, name]))

    print(f"\nmodel {args.model}; layouts as processes x torch threads, each scenario {args.seconds:.0f} s per "
          f"layout in {args.rounds} interleaved rounds")
    print(f"{'layout':>8} {'batched 1 client':>18} {'batched 8 clients':>18} {'single 32 clients':>18} "
          f"{'errors':>7} {'server CPU/req':>15}")
    base = layouts[0]
    for layout in layouts:
        b1, b8, s32 = (runs[layout, name] for name, _, _ in scenarios)
        errors = sum(r.error_count for r in (b1, b8, s32))
        print(f"{layout[0]}x{layout[1]:<6} {b1.tokens_per_s:11,.0f} tok/s {b8.tokens_per_s:11,.0f} tok/s "
              f"{s32.requests_per_s:12.1f} req/s {errors:7d} {s32.cpu_ms():12.2f} ms")
    for layout in layouts[1:]:
        ratios = [runs[layout, n].tokens_per_s / runs[base, n].tokens_per_s for n, _, _ in scenarios[:2]]
        ratios.append(runs[layout, scenarios[2][0]].requests_per_s / runs[base, scenarios[2][0]].requests_per_s)
        print(f"{layout[0]}x{layout[1]} / {base[0]}x{base[1]}: " + ", ".join(
            f"{name} {ratio:.2f}x" for (name, _, _), ratio in zip(scenarios, ratios)))


if __name__ == "__main__":
    main()
