"""Fault drills against real processes: a SIGKILLed `serve --with-worker` worker, bad bytes on the wire,
lone surrogates through a real server."""
from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

TINY = dict(emb=32, hidden=32, layers=1, max_vocab=500, train_tokens=15000, valid_tokens=2000, batch_size=16,
            bptt=20, dropout=0.0, seed=1, patience=100)


def process_state(pid: int) -> str | None:
    """`R`, `S`, `Z` (zombie), ... or None once the process is gone (reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def metric(base: str, name: str) -> float | None:
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def test_killed_worker_is_reaped_restarted_reported_and_its_job_resumes(tmp_path, data_root, tiny_model,
                                                                        proc_tools, serve, processes):
    wait_for, live_children = proc_tools.wait_for, processes.live_children
    # stale-after 600 s: the job can only come back this fast because the supervisor re-queues it
    env = dict(OMP_NUM_THREADS="1", RNNLM_DATA_ROOTS=str(data_root), RNNLM_WORKER_POLL_INTERVAL_S="0.2",
               RNNLM_JOB_STALE_AFTER_S="600", RNNLM_WORKER_RESTART_BACKOFF_S="2")
    with serve(tmp_path, "--with-worker", model=tiny_model, env=env, stop_timeout_s=60) as server:
        base, proc, log = server.url, server.proc, server.log
        ready = httpx.get(f"{base}/ready").json()
        assert ready["worker"]["status"] == "running" and ready["worker"]["restarts"] == 0
        assert metric(base, "rnnlm_worker_up") == 1.0
        [first] = live_children(proc.pid)
        assert ready["worker"]["pid"] == first

        epochs = 6
        r = httpx.post(f"{base}/v1/jobs", json={"type": "train", "name": "phoenix",
                                                "data": str(data_root / "wt2-400"), **TINY, "epochs": epochs})
        assert r.status_code == 202, r.text
        job_url = f"{base}/v1/jobs/{r.json()['id']}"
        wait_for(lambda: (httpx.get(job_url).json()["progress"] or {}).get("epoch"), 120, "the first epoch", proc, log)
        first_worker_id = httpx.get(job_url).json()["worker_id"]

        os.kill(first, signal.SIGKILL)
        wait_for(lambda: process_state(first) is None, 10, "the dead worker to be reaped", proc, log)
        down = httpx.get(f"{base}/ready")  # within the 2 s backoff
        assert down.status_code == 503, down.text
        assert down.json()["status"] == "degraded" and down.json()["models"] == ["lstm"]  # still served
        assert down.json()["worker"]["status"] == "restarting"
        assert down.json()["worker"]["last_exit"] == "killed by SIGKILL"
        assert metric(base, "rnnlm_worker_up") == 0.0

        ready = wait_for(lambda: (j := httpx.get(f"{base}/ready").json())["worker"]["status"] == "running" and j,
                         15, "the restarted worker", proc, log)
        assert ready["worker"]["restarts"] == 1 and ready["worker"]["pid"] != first
        assert live_children(proc.pid) == [ready["worker"]["pid"]]
        assert metric(base, "rnnlm_worker_restarts_total") == 1.0
        assert metric(base, "rnnlm_worker_up") == 1.0

        job = wait_for(lambda: (j := httpx.get(job_url).json())["status"] in ("succeeded", "failed") and j,
                       240, "the job to finish", proc, log)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2 and job["worker_id"] != first_worker_id
        assert job["progress"]["resumed_from_epoch"] >= 1  # resumed, not started over
        assert job["result"]["epochs_run"] == epochs
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "killed by SIGKILL; restarting it in 2.0 s" in log.read_text()
    assert live_children(proc.pid) == []


# ---- a real server: bytes no client library would send ---------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model: Path, serve) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("faults")
    with serve(tmp, model=tiny_model, env={"RNNLM_DATA_ROOTS": str(tmp)}) as running:
        yield running.url


def raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("content_length", [b"abc", b"-1", b"1, 2"])
def test_bad_content_length_gets_400_with_the_error_body(server, content_length):
    answer = raw(server, b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %s\r\n\r\n{}" % content_length)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert b"content-type: application/json" in head.lower()
    error = httpx.Response(400, content=body).json()["error"]
    assert error["type"] == "invalid_request_error" and "Content-Length" in error["message"]


@pytest.mark.parametrize("path, body", [
    ("/v1/score", b'{"texts": ["a \\ud800 b"]}'),
    ("/v1/perplexity", b'{"texts": ["a \\udc00"]}'),
    ("/v1/rank", b'{"candidates": ["\\ud800", "b"]}'),
    ("/v1/next-word", b'{"text": "a \\ud800 "}'),
    ("/v1/generate", b'{"prompt": "\\ud800", "max_tokens": 2, "stream": true}'),
    ("/v1/completions", b'{"model": "lstm", "prompt": "\\ud800", "max_tokens": 1, "echo": true}'),
    ("/v1/jobs", b'{"type": "train", "name": "x", "data": "/nowhere/\\ud800"}'),
])
def test_lone_surrogates_never_give_a_500_and_keep_the_connection(server, path, body):
    with httpx.Client(base_url=server, timeout=30) as client:
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            assert set(r.json()["error"]) >= {"type", "message"}
        assert client.get("/health").status_code == 200  # the same keep-alive connection still serves
