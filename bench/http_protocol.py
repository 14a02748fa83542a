"""The server's fixed per-request cost by HTTP protocol and event loop, in one run.

Three `rnnlm serve` processes (bench/benchlib.py, one torch thread each): uvicorn's pure-Python h11
protocol on asyncio's loop (the server before httptools), httptools on asyncio's loop, and httptools on
uvloop (the default when uvloop is installed). Each gets /health, /v1/next-word (a 10-word text, k=5)
and one-sentence /v1/score, from 1 client and from --many, in --rounds interleaved slices so that the
machine's other load falls on all of them alike; only one server is driven at a time. Printed: the
round-trip p50 and requests/s, and each server's p50 against h11 + asyncio's.

    python bench/http_protocol.py --checkpoints checkpoints --model lstm
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from benchlib import Connection, ServerProcess, model_parser, request_bytes, serve, test_sentences

SERVERS = (("h11 + asyncio", {"RNNLM_HTTP": "h11", "RNNLM_LOOP": "asyncio"}),
           ("httptools + asyncio", {"RNNLM_HTTP": "httptools", "RNNLM_LOOP": "asyncio"}),
           ("httptools + uvloop", {"RNNLM_HTTP": "httptools", "RNNLM_LOOP": "uvloop"}))


async def drive(server: ServerProcess, payloads: list[bytes], clients: int, seconds: float,
                latencies: list[float], counts: list[float]) -> None:
    """`clients` keep-alive connections, each sending its next payload as soon as the last is answered, for
    `seconds`; appends each 200's round trip to `latencies` and (requests, seconds, errors) to `counts`."""
    conns = [Connection(server.port) for _ in range(clients)]
    for conn in conns:  # open every connection before the clock starts
        await conn.call(payloads[0])
    stop, done, errors = time.perf_counter() + seconds, [0], [0]

    async def client(conn: Connection, i: int) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status, _, _ = await conn.call(payloads[i % len(payloads)])
            if status != 200:
                errors[0] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            done[0] += 1
            i += 1

    start = time.perf_counter()
    try:
        await asyncio.gather(*(client(conn, i) for i, conn in enumerate(conns)))
    finally:
        for conn in conns:
            conn.close()
    counts[0] += done[0]
    counts[1] += time.perf_counter() - start
    counts[2] += errors[0]


def main() -> None:
    parser = model_parser(__doc__, threads_help="torch threads of each server process")
    parser.add_argument("--many", type=int, default=32, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=6, help="length of each cell, all rounds together")
    parser.add_argument("--rounds", type=int, default=3, help="each cell runs in this many slices, interleaved")
    args = parser.parse_args()
    if not (Path(args.checkpoints) / args.model / "config.json").is_file():
        sys.exit(f"no model {args.model!r} in {args.checkpoints}")
    sentences = test_sentences(Path(args.data), 512)
    texts = [" ".join(s.split()[:10]) + " " for s in sentences if len(s.split()) >= 10]
    routes = {"/health": [b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"],
              "/v1/next-word": [request_bytes("/v1/next-word", {"model": args.model, "text": t, "k": 5})
                                for t in texts],
              "/v1/score": [request_bytes("/v1/score", {"model": args.model, "texts": [s]}) for s in sentences]}
    cells = [(route, clients) for route in routes for clients in (1, args.many)]
    lat = {(name, cell): [] for name, _ in SERVERS for cell in cells}
    counts = {(name, cell): [0, 0.0, 0] for name, _ in SERVERS for cell in cells}
    slice_s = args.seconds / args.rounds
    with ExitStack() as stack:
        servers = [(name, stack.enter_context(serve(args.checkpoints, args.model, args.threads, env=env)))
                   for name, env in SERVERS]
        for _name, server in servers:  # warm-up
            for route, clients in cells:
                asyncio.run(drive(server, routes[route], clients, 0.5, [], [0, 0.0, 0]))
        for r in range(args.rounds):
            print(f"[round {r + 1}/{args.rounds}] {slice_s:.1f} s per cell ...", flush=True)
            for route, clients in cells:
                for name, server in servers:
                    asyncio.run(drive(server, routes[route], clients, slice_s, lat[name, (route, clients)],
                                      counts[name, (route, clients)]))

    print(f"\nmodel {args.model}, {args.threads} torch thread(s) per server; /v1/next-word: 10-word texts, k=5; "
          f"/v1/score: one WikiText-2 test sentence per request; round-trip p50 over loopback")
    print(f"{'route':>14} {'clients':>7}  " + "  ".join(f"{name:>28}" for name, _ in SERVERS))
    for route, clients in cells:
        base = statistics.median(lat[SERVERS[0][0], (route, clients)])
        row = []
        for name, _ in SERVERS:
            p50 = statistics.median(lat[name, (route, clients)])
            n, secs, errors = counts[name, (route, clients)]
            row.append(f"{p50 * 1e3:6.2f} ms {n / secs:6.0f}/s {p50 / base:4.2f}x" + (f" E{errors}" if errors else ""))
        print(f"{route:>14} {clients:>7}  " + "  ".join(f"{cell:>28}" for cell in row))
    print("(each cell: p50, requests/s, p50 against h11 + asyncio; E: non-200 answers)")


if __name__ == "__main__":
    main()
