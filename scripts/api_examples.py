"""Start `rnnlm serve` on the shipped models, call every endpoint, print curl commands + real output.

The README's API section is this script's output:
    .venv/bin/python scripts/api_examples.py > /tmp/api.md
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from service.server import free_port

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


def shorten(value, items: int = 4):
    """Keep long lists readable: the first few items and a count of the rest."""
    if isinstance(value, dict):
        keys = list(value)
        out = {k: shorten(value[k], items) for k in keys[:9]}
        if len(keys) > 13:
            out["..."] = f"{len(keys) - 9} more fields"
        else:
            out.update({k: shorten(value[k], items) for k in keys[9:]})
        return out
    if isinstance(value, list):
        head = [shorten(v, items) for v in value[:items]]
        return head + ([f"... {len(value) - items} more"] if len(value) > items else [])
    if isinstance(value, float):
        return round(value, 4)
    return value


# a relative `data` is resolved against the server's working directory: the repository root under `make serve`
JOB = {"type": "train", "name": "tiny-gru", "data": "../shared/data/wikitext-2",
       "arch": "gru", "emb": 64, "hidden": 64, "layers": 1, "epochs": 2, "train_tokens": 200000,
       "valid_tokens": 20000}


def show(curl: str, out: str) -> None:
    print(f"```bash\n{curl}\n```\n```\n{out}\n```\n")


def curl_for(method: str, path: str, body: dict | None) -> str:
    if body is None:
        return f"curl -s localhost:8000{path}" + (" -X POST" if method == "POST" else "")
    return f"curl -s localhost:8000{path} -H 'Content-Type: application/json' \\\n  -d '{json.dumps(body)}'"


def run_job(client: httpx.Client) -> None:
    """Submit a small training job, watch it, then score with the new model."""
    r = client.post("/v1/jobs", json=JOB)
    show(curl_for("POST", "/v1/jobs", JOB), f"HTTP {r.status_code}\n" + json.dumps(r.json(), indent=2))
    job_id = r.json()["id"]
    seen_running = None
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and (job.get("progress") or {}).get("epoch") and seen_running is None:
            seen_running = job
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    if seen_running is not None:
        show(f"curl -s localhost:8000/v1/jobs/{job_id}   # while it runs",
             json.dumps(shorten(seen_running), indent=2))
    show(f"curl -s localhost:8000/v1/jobs/{job_id}", json.dumps(shorten(job), indent=2))
    body = {"model": JOB["name"], "texts": ["The album was released in 1999 ."]}
    for _ in range(60):  # the registry's watcher loads the new folder within a few seconds
        r = client.post("/v1/score", json=body)
        if r.status_code == 200:
            break
        time.sleep(1)
    show(curl_for("POST", "/v1/score", body), json.dumps(shorten(r.json()), indent=2))


def main() -> None:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="rnnlm-examples-"))
    checkpoints = workdir / "checkpoints"
    shutil.copytree("checkpoints", checkpoints)  # jobs write here, not into the repository
    env = dict(os.environ, RNNLM_DATA_ROOTS=str(Path("../shared/data").resolve()))
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--checkpoints",
                               str(checkpoints), "--jobs-db", str(workdir / "jobs.db"), "--with-worker"], env=env,
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
                curl = curl_for(method, path, body)
                if body and body.get("stream"):
                    with client.stream(method, path, json=body) as r:
                        text = "".join(r.iter_text())
                    out = text.strip()
                    curl = curl.replace("curl -s", "curl -sN")
                else:
                    r = client.request(method, path, json=body)
                    out = f"HTTP {r.status_code}\n" if r.status_code >= 400 else ""
                    out += json.dumps(shorten(r.json()), indent=2, ensure_ascii=False)
                show(curl, out)
            if "--jobs" in sys.argv:
                run_job(client)
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
