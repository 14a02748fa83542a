"""`rnnlm serve` as a real process: readiness, scoring and streamed generation over real HTTP, metrics."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path, tiny_model: Path, proc_tools) -> Iterator[str]:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    shutil.copytree(tiny_model, checkpoints / "lstm")
    port, log = proc_tools.free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                                 "--checkpoints", str(checkpoints), "--threads", "1"],
                                cwd=REPO, env=proc_tools.clean_env(), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        proc_tools.wait_ready(f"{url}/ready", proc, log, "rnnlm serve", timeout_s=90)
        yield url
    finally:
        proc_tools.stop(proc)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status reports the signal.
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()


def test_real_server(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"status": "ready", "models": ["lstm"]}

        r = client.post("/v1/score", json={"texts": ["The game was released in Japan ."], "details": True})
        assert r.status_code == 200
        result = r.json()["results"][0]
        assert r.json()["model"] == "lstm"
        assert sum(t["logprob"] for t in result["tokens"]) == pytest.approx(result["logprob"], abs=1e-4)

        r = client.post("/v1/score", json={"texts": []})
        assert r.status_code == 422 and r.json()["error"]["param"] == "texts"

        data = []
        with client.stream("POST", "/v1/generate",
                           json={"prompt": "The film", "max_tokens": 20, "seed": 5, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data:"):
                    data.append(line[len("data:"):].strip())
                    if len(data) == 1:  # the event loop is free while the stream is open
                        assert client.get("/health").status_code == 200
        assert data[-1] == "[DONE]"
        events = [json.loads(d) for d in data[:-1]]
        final = events[-1]
        assert final["finish_reason"] in ("length", "stop", "eos") and final["token"] is None
        tokens = [e["token"] for e in events[:-1]]
        assert all(t is not None for t in tokens) and len(tokens) <= 20
        plain = client.post("/v1/generate", json={"prompt": "The film", "max_tokens": 20, "seed": 5}).json()
        assert plain["choices"][0]["tokens"] == tokens

        r = client.get("/metrics")
        assert r.status_code == 200
        requests = {(s.labels["endpoint"], s.labels["status"]): s.value
                    for family in text_string_to_metric_families(r.text) for s in family.samples
                    if s.name == "rnnlm_requests_total"}
        assert requests[("/v1/score", "200")] == 1
        assert requests[("/v1/score", "422")] == 1
        assert requests[("/v1/generate", "200")] == 2
        assert requests[("/ready", "200")] >= 1


def test_public_address_needs_a_key(proc_tools) -> None:
    proc = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                          cwd=REPO, env=proc_tools.clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "0.0.0.0" in proc.stderr
