"""`rnnlm serve --ray --replicas 2` on a local one-node Ray cluster: the same API, spread over two replicas.

Slow (a Ray cluster and two replicas start in about a minute on two cores): it runs when Ray Serve is
installed (`pip install -e '.[ray]'`) and RNNLM_RAY_TESTS=1, as `make test-ray` sets it.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]

if importlib.util.find_spec("ray") is None:
    pytestmark = pytest.mark.skip(reason="Ray Serve is not installed: pip install -e '.[ray]'")
elif os.environ.get("RNNLM_RAY_TESTS") != "1":
    pytestmark = pytest.mark.skip(reason="starts a Ray cluster (about a minute): set RNNLM_RAY_TESTS=1 "
                                         "(make test-ray)")

TEXT = "The album was released in 1999 ."
REQUESTS = [
    ("/v1/score", {"texts": [TEXT, "The album were release in 1999 ."], "details": True}),
    ("/v1/perplexity", {"texts": [TEXT, "He played for the club ."]}),
    ("/v1/rank", {"candidates": ["the game was played", "the game were played"]}),
    ("/v1/next-word", {"text": "The first season of the ", "k": 5}),
    ("/v1/generate", {"prompt": "The song", "max_tokens": 8, "seed": 3}),
]


def replica_of(response: httpx.Response) -> str:
    return response.headers["x-replica"]


def pid_of(replica: str) -> int:
    return int(replica.rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, tiny_model: Path, proc_tools) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("ray")
    checkpoints, metrics_dir = root / "checkpoints", root / "metrics"
    checkpoints.mkdir()
    shutil.copytree(tiny_model, checkpoints / "tiny")
    port, log = proc_tools.free_port(), root / "serve.log"
    settings = Settings(checkpoints=checkpoints, jobs_db=root / "jobs.db", default_model="tiny")
    env = proc_tools.clean_env(RNNLM_DEFAULT_MODEL="tiny", RNNLM_JOBS_DB=str(root / "jobs.db"))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--ray", "--replicas", "2",
                                 "--replica-cpus", "0.5", "--port", str(port), "--checkpoints", str(checkpoints),
                                 "--ray-metrics-dir", str(metrics_dir), "--threads", "1"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        proc_tools.wait_ready(f"{url}/ready", proc, log, "rnnlm serve --ray", timeout_s=240)
        proc_tools.wait_for(lambda: len(list(metrics_dir.glob("*.json"))) == 2, 60, "two replicas' metrics targets",
                            proc, log)
        yield SimpleNamespace(url=url, settings=settings.model_copy(update={"threads": 1}),
                              metrics_dir=metrics_dir, log=log, proc=proc)
    finally:
        proc_tools.stop(proc, timeout_s=90)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_requests_are_spread_over_both_replicas(ray_server):
    seen = collections.Counter()
    with httpx.Client(base_url=ray_server.url, timeout=30) as client:
        for _ in range(30):
            r = client.post("/v1/score", json={"texts": [TEXT]})
            assert r.status_code == 200, r.text
            seen[replica_of(r)] += 1
    assert len(seen) == 2, seen
    assert len({pid_of(r) for r in seen}) == 2  # two processes


def test_responses_equal_the_single_process_servers(ray_server):
    with TestClient(create_app(ray_server.settings)) as single, httpx.Client(base_url=ray_server.url,
                                                                             timeout=30) as ray:
        for path, body in REQUESTS:
            expected, got = single.post(path, json=body), ray.post(path, json=body)
            assert (got.status_code, got.json()) == (expected.status_code, expected.json()), path
        for path in ("/v1/models/tiny", "/ready"):
            assert ray.get(path).json() == single.get(path).json(), path
        # bad input gets the same error body
        bad = {"texts": []}
        assert ray.post("/v1/score", json=bad).json() == single.post("/v1/score", json=bad).json()
        assert ray.post("/v1/score", json=bad).status_code == 422


def _score_requests(metrics_dir: Path) -> dict[str, float]:
    """rnnlm_requests_total for /v1/score with status 200, per replica, scraped from each file_sd target."""
    counts = {}
    for target_file in metrics_dir.glob("*.json"):
        (group,) = json.loads(target_file.read_text())
        text = httpx.get(f"http://{group['targets'][0]}/metrics", timeout=10).text
        counts[group["labels"]["replica"]] = sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("rnnlm_requests_total{") and 'endpoint="/v1/score"' in line and 'status="200"' in line)
    return counts


def test_metrics_are_scraped_per_replica_from_file_sd_targets(ray_server):
    before = _score_requests(ray_server.metrics_dir)
    assert len(before) == 2
    with httpx.Client(base_url=ray_server.url, timeout=30) as client:
        replicas = collections.Counter(replica_of(client.post("/v1/score", json={"texts": [TEXT]}))
                                       for _ in range(20))
        through_proxy = client.get("/metrics")
    after = _score_requests(ray_server.metrics_dir)
    assert sum(after.values()) - sum(before.values()) == 20  # every request counted once, by its replica
    for replica, n in replicas.items():
        replica_id = replica.split()[0]
        assert after[replica_id] - before[replica_id] == n
    # /metrics through the proxy is one replica's own registry, and says which
    assert through_proxy.status_code == 200 and "rnnlm_requests_total" in through_proxy.text
    assert replica_of(through_proxy).split()[0] in after


def _load(url: str, clients: int, per_client: int, retry: bool) -> tuple[collections.Counter, list]:
    """`clients` threads each sending `per_client` score requests; with `retry`, a 5xx is sent again."""
    statuses, bodies = collections.Counter(), []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(per_client):
                for _attempt in range(5):
                    r = http.post("/v1/score", json={"texts": [TEXT] * 16})
                    with lock:
                        statuses[r.status_code] += 1
                    if r.status_code < 500 or not retry:
                        break
                with lock:
                    bodies.append((r.status_code, r.json()["results"][0] if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    return statuses, bodies, threads


def _expected(ray_server) -> dict:
    with httpx.Client(base_url=ray_server.url, timeout=30) as client:
        return client.post("/v1/score", json={"texts": [TEXT]}).json()["results"][0]


def _a_replica(ray_server) -> str:
    return replica_of(httpx.post(f"{ray_server.url}/v1/score", json={"texts": [TEXT]}, timeout=30))


def test_a_replica_stopped_with_sigterm_loses_no_request(ray_server, proc_tools):
    expected, victim = _expected(ray_server), _a_replica(ray_server)
    statuses, bodies, threads = _load(ray_server.url, clients=4, per_client=12, retry=False)
    proc_tools.wait_for(lambda: sum(statuses.values()) >= 4, 60, "requests under way")
    os.kill(pid_of(victim), signal.SIGTERM)
    for t in threads:
        t.join(timeout=180)
    assert statuses == {200: 48}, statuses  # its requests finished, the others went to the other replica
    assert all(body == expected for _, body in bodies)
    # Ray starts a replacement, and both serve again
    proc_tools.wait_for(lambda: len({_a_replica(ray_server) for _ in range(10)} - {victim}) == 2, 180,
                        "a replacement replica")


def test_a_killed_replica_fails_only_its_requests_in_flight_and_a_retry_gets_them(ray_server, proc_tools):
    expected, victim = _expected(ray_server), _a_replica(ray_server)
    statuses, bodies, threads = _load(ray_server.url, clients=4, per_client=12, retry=True)
    proc_tools.wait_for(lambda: sum(statuses.values()) >= 4, 60, "requests under way")
    os.kill(pid_of(victim), signal.SIGKILL)
    for t in threads:
        t.join(timeout=180)
    # Ray's proxy answers a request that was running in the killed process with a 5xx; sent again, it is
    # served by the other replica: every request gets its answer
    assert len(bodies) == 48 and all(status == 200 and body == expected for status, body in bodies), statuses
    assert statuses[200] == 48 and sum(n for s, n in statuses.items() if s >= 500) <= 8  # at most its in-flight
    proc_tools.wait_for(lambda: len({_a_replica(ray_server) for _ in range(10)} - {victim}) == 2, 180,
                        "a replacement replica")
