"""Scoring throughput of /v1/completions (echo, max_tokens 0) against /v1/score on the same texts.

Starts `rnnlm serve` once and sends the same WikiText-2 test sentences, `--batch` per request, to both
routes in alternating rounds (so both see the same machine load), one client at a time:

  /v1/score        {"texts": [...], "add_eos": false, "details": true}
  /v1/completions  {"prompt": [...], "max_tokens": 0, "echo": true, "logprobs": 0}

Both return every token's log-probability. Also timed, for information: lm-evaluation-harness' own
request (`logprobs: 1`, `max_tokens: 1`: the top alternative at every position and one generated token).

    python bench/completions.py --checkpoints checkpoints --model lstm
"""
from __future__ import annotations

import statistics
import time

import httpx
from benchlib import model_parser, test_sentences
from load import server

ROUTES = {
    "/v1/score": lambda model, texts: ("/v1/score", {"model": model, "texts": texts, "add_eos": False,
                                                     "details": True}),
    "/v1/completions": lambda model, texts: ("/v1/completions", {"model": model, "prompt": texts, "max_tokens": 0,
                                                                 "echo": True, "logprobs": 0}),
    "lm-eval request": lambda model, texts: ("/v1/completions", {"model": model, "prompt": texts, "max_tokens": 1,
                                                                 "echo": True, "logprobs": 1, "temperature": 0}),
}


def one_pass(client: httpx.Client, model: str, name: str, batches: list[list[str]]) -> float:
    """Seconds to send every batch once, in order; each response is checked."""
    start = time.perf_counter()
    for texts in batches:
        path, body = ROUTES[name](model, texts)
        r = client.post(path, json=body)
        r.raise_for_status()
        answer = r.json()
        assert len(answer.get("results") or answer.get("choices")) == len(texts)
    return time.perf_counter() - start


def main() -> None:
    parser = model_parser(__doc__, "server torch threads")
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16, help="texts per request")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; the median is reported")
    args = parser.parse_args()
    sentences = test_sentences(args.data, args.sentences)
    batches = [sentences[i:i + args.batch] for i in range(0, len(sentences), args.batch)]
    with server(args.checkpoints, args.model, {"RNNLM_MAX_TEXTS": str(max(64, args.batch))}, args.threads) as (url, _):
        with httpx.Client(base_url=url, timeout=120) as client:
            tokens = sum(len(t["tokens"]) for texts in batches for t in client.post(
                "/v1/score", json={"model": args.model, "texts": texts, "add_eos": False, "details": True}
            ).json()["results"])
            for name in ROUTES:  # warm-up
                one_pass(client, args.model, name, batches[:2])
            times: dict[str, list[float]] = {name: [] for name in ROUTES}
            for _ in range(args.rounds):
                for name in ROUTES:
                    times[name].append(one_pass(client, args.model, name, batches))
    print(f"model {args.model}, server torch threads {args.threads}; {len(sentences)} WikiText-2 test sentences "
          f"({tokens:,} tokens) in requests of {args.batch}, one client, median of {args.rounds} alternating rounds")
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    for name, value in rate.items():
        print(f"  {name:<16} {value:9,.0f} tokens/s   {len(sentences) / statistics.median(times[name]):7.1f} texts/s")
    ratio = rate["/v1/completions"] / rate["/v1/score"]
    print(f"  /v1/completions / /v1/score: {ratio:.3f}x (target: within 10 %, i.e. >= 0.90x): "
          f"{'yes' if ratio >= 0.9 else 'no'}")
    print(f"  lm-eval request / /v1/score: {rate['lm-eval request'] / rate['/v1/score']:.3f}x")


if __name__ == "__main__":
    main()
