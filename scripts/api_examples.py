"""Start `rnnlm serve` on the shipped models, call every endpoint, print curl commands + real output.

The README's API section is this script's output:
    .venv/bin/python scripts/api_examples.py > /tmp/api.md
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx

EXAMPLES = [
    ("GET", "/health", None),
    ("GET", "/ready", None),
    ("GET", "/v1/models/lstm", None),
    ("POST", "/v1/score", {"texts": ["The album was released in 1999 .", "The album were release in 1999 ."],
                           "details": False}),
    ("POST", "/v1/score", {"model": "student", "texts": ["The song was a hit."], "details": True}),
    ("POST", "/v1/perplexity", {"model": "gru", "texts": ["The city is the capital of the province.",
                                                          "He played for the club in the 2005 season."]}),
    ("POST", "/v1/next-word", {"text": "The first season of the ", "k": 5}),
    ("POST", "/v1/next-word", {"text": "He was born in Lon", "k": 3}),
    ("POST", "/v1/generate", {"prompt": "The game", "context": "Valkyria Chronicles III", "max_tokens": 20,
                              "temperature": 0.8, "top_p": 0.9, "seed": 7}),
    ("POST", "/v1/generate", {"prompt": "The river", "max_tokens": 5, "temperature": 0, "stream": True}),
    ("POST", "/v1/rank", {"candidates": ["I would like to recognise speech .",
                                         "I would like to wreck a nice beach .",
                                         "Eye would like two recognise speech ."]}),
    ("POST", "/v1/score", {"texts": []}),
    ("POST", "/v1/generate", {"prompt": "x", "top_p": 1.5}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shorten(value, items: int = 4):
    """Keep long lists readable: the first few items and a count of the rest."""
    if isinstance(value, dict):
        return {k: shorten(v, items) for k, v in value.items()}
    if isinstance(value, list):
        head = [shorten(v, items) for v in value[:items]]
        return head + ([f"... {len(value) - items} more"] if len(value) > items else [])
    if isinstance(value, float):
        return round(value, 4)
    return value


def main() -> None:
    port = free_port()
    env = dict(os.environ, RNNLM_CHECKPOINTS=os.environ.get("RNNLM_CHECKPOINTS", "checkpoints"))
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            for _ in range(600):
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            for method, path, body in EXAMPLES:
                curl = f"curl -s localhost:8000{path}"
                if body is not None:
                    curl = f"curl -s localhost:8000{path} -H 'Content-Type: application/json' \\\n  -d '{json.dumps(body)}'"
                if body and body.get("stream"):
                    with client.stream(method, path, json=body) as r:
                        text = "".join(r.iter_text())
                    out = text.strip()
                    curl = curl.replace("curl -s", "curl -sN")
                else:
                    r = client.request(method, path, json=body)
                    out = f"HTTP {r.status_code}\n" if r.status_code >= 400 else ""
                    out += json.dumps(shorten(r.json()), indent=2, ensure_ascii=False)
                print(f"```bash\n{curl}\n```\n```\n{out}\n```\n")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
