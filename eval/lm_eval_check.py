"""Run lm-evaluation-harness, unmodified, against `rnnlm serve`, and check its result against /v1/score.

Starts `rnnlm serve` on a free loopback port (or uses --url), runs

    lm_eval --model local-completions --model_args model=MODEL,base_url=URL/v1/completions,
            tokenizer=checkpoints/MODEL,tokenizer_backend=huggingface --tasks wikitext2_pairs
            --include_path eval/tasks --log_samples

and compares every log-likelihood the harness logged with the sum of /v1/score's token log-probabilities
for the same sentence ("add_eos": false: the harness scores a choice from the sentence start to its last
word), and the harness' accuracy with the one /v1/score's numbers give. Needs the `eval` extra.

    python eval/lm_eval_check.py --model lstm
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from rnnlm_client import Client
from service.server import free_port

REPO = Path(__file__).resolve().parents[1]
TASK = "wikitext2_pairs"


def start_server(checkpoints: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLM_")}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--checkpoints",
                             str(checkpoints), "--threads", "1"], cwd=REPO, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"rnnlm serve exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("rnnlm serve did not become ready in 120 s")


def run_lm_eval(url: str, model: str, tokenizer: Path, out: Path, batch_size: int, limit: int | None) -> list[dict]:
    """The harness' logged samples (one per pair: both choices' log-likelihoods)."""
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
           f"model={model},base_url={url}/v1/completions,tokenizer={tokenizer},tokenizer_backend=huggingface,"
           "num_concurrent=1,max_retries=1", "--tasks", TASK, "--include_path", "eval/tasks",
           "--batch_size", str(batch_size), "--output_path", str(out), "--log_samples"]
    if limit:
        cmd += ["--limit", str(limit)]
    print("$", " ".join(cmd[2:]).replace(sys.executable, "python"), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf"),
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"lm_eval failed ({done.returncode}):\n{done.stderr[-4000:]}")
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    print("\n".join(table))
    files = sorted(out.rglob(f"samples_{TASK}_*.jsonl"))
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--checkpoints", type=Path, default=REPO / "checkpoints")
    parser.add_argument("--url", help="a running server (default: start one on a free loopback port)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per /v1/completions request")
    parser.add_argument("--limit", type=int, help="only the first N pairs")
    args = parser.parse_args(argv)
    tokenizer = args.checkpoints / args.model
    if not (tokenizer / "tokenizer.json").is_file():
        raise SystemExit(f"no tokenizer.json in {tokenizer}: python -m models.hf_tokenizer {tokenizer}")
    with tempfile.TemporaryDirectory(prefix="rnnlm-lm-eval-") as tmp:
        if args.url:
            proc, url = None, args.url.rstrip("/")
        else:
            proc, url = start_server(args.checkpoints, Path(tmp) / "serve.log")
        try:
            samples = run_lm_eval(url, args.model, tokenizer, Path(tmp), args.batch_size, args.limit)
            samples.sort(key=lambda s: s["doc_id"])
            texts = [t for s in samples for t in (s["doc"]["good"], s["doc"]["bad"])]
            with Client(url, timeout=120) as client:
                scores = []
                for start in range(0, len(texts), 64):
                    scored = client.score(texts[start:start + 64], model=args.model, add_eos=False)
                    scores += [r.logprob for r in scored.results]
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    harness = [float(choice[0]) for s in samples for choice in s["filtered_resps"]]
    diff = max(abs(a - b) for a, b in zip(harness, scores))
    acc_harness = sum(s["acc"] for s in samples) / len(samples)
    acc_score = sum(scores[2 * i] > scores[2 * i + 1] for i in range(len(samples))) / len(samples)
    print(f"{len(samples)} pairs, {len(harness)} log-likelihoods, model {args.model}")
    print(f"  accuracy: lm_eval {acc_harness:.4f}, from /v1/score {acc_score:.4f}")
    print(f"  largest |lm_eval log-likelihood - /v1/score logprob|: {diff:.2e} nats")
    ok = acc_harness == acc_score and diff < 1e-3
    print("  equal:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
