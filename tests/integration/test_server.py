"""`rnnlm serve` as a real process, driven by rnnlm_client: readiness, scoring and streamed generation over
real HTTP, metrics."""
from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rnnlm_client import BadRequestError, Client

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path, tiny_model: Path, serve) -> Iterator[str]:
    with serve(tmp_path, model=tiny_model) as running:
        yield running.url
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status reports the signal.
    assert running.proc.returncode in (0, -signal.SIGTERM), running.log.read_text()
    assert "Application shutdown complete" in running.log.read_text()


def test_real_server(server: str) -> None:
    with Client(server, timeout=30) as client:
        assert client.health().status == "ok"
        ready = client.ready()
        assert ready.ready and ready.models == ["lstm"]

        scored = client.score(["The game was released in Japan ."], details=True)
        result = scored.results[0]
        assert scored.model == "lstm"
        assert sum(t.logprob for t in result.tokens) == pytest.approx(result.logprob, abs=1e-4)

        with pytest.raises(BadRequestError) as err:
            client.score([])
        assert err.value.status == 422 and err.value.param == "texts"

        chunks = []
        with client.generate("The film", max_tokens=20, seed=5, stream=True) as stream:
            assert stream.response.headers["content-type"].startswith("text/event-stream")
            for chunk in stream:
                chunks.append(chunk)
                if len(chunks) == 1:  # the event loop is free while the stream is open
                    assert client.health().status == "ok"
        final = chunks[-1]
        assert final.finish_reason in ("length", "stop", "eos") and final.token is None
        tokens = [c.token for c in chunks[:-1]]
        assert all(t is not None for t in tokens) and len(tokens) <= 20
        plain = client.generate("The film", max_tokens=20, seed=5)
        assert plain.choices[0].tokens == tokens

        requests = {(s.labels["endpoint"], s.labels["status"]): s.value
                    for family in text_string_to_metric_families(client.metrics()) for s in family.samples
                    if s.name == "rnnlm_requests_total"}
        assert requests[("/v1/score", "200")] == 1
        assert requests[("/v1/score", "422")] == 1
        assert requests[("/v1/generate", "200")] == 2
        assert requests[("/ready", "200")] >= 1


def test_public_address_needs_a_key(proc_tools, processes) -> None:
    proc = subprocess.run(processes.rnnlm("serve", "--host", "0.0.0.0", "--port", "1"), cwd=REPO,
                          env=proc_tools.clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "0.0.0.0" in proc.stderr
