"""Prometheus: docker/prometheus.yml passes `promtool check config`, and a real Prometheus (the Debian
package's binary) scrapes a live `rnnlm serve` and `rnnlm worker`, with the jobs of
docker/prometheus.yml pointed at 127.0.0.1 and a 1 s scrape interval. What arrived is read back
through Prometheus's own HTTP query API, and every Grafana dashboard expression is run there."""
from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "docker" / "prometheus.yml"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "rnnlm.json"
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "1s", "$__range": "1h"}


def test_promtool_checks_the_config(need_tool) -> None:
    promtool = need_tool("promtool")
    proc = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_rejects_a_broken_config(need_tool, tmp_path: Path) -> None:
    """promtool really checks: the same file with an unknown scrape option fails."""
    promtool = need_tool("promtool")
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_CONFIG.read_text().replace("metrics_path:", "metric_path:", 1))
    assert subprocess.run([promtool, "check", "config", str(broken)], capture_output=True, timeout=60).returncode != 0


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def wait(self, expr: str, ok: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 90.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if ok(result):
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"{expr}: still {result} after {timeout_s:.0f} s")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def prometheus_binary(need_tool) -> str:
    return need_tool("prometheus")  # checked before the stack starts


@pytest.fixture(scope="module")
def prometheus(prometheus_binary: str, need_module, stack, proc_tools,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus with docker/prometheus.yml's api and worker jobs, their DNS discovery replaced by the
    live processes' 127.0.0.1 addresses, scraping every second."""
    binary = prometheus_binary
    yaml = need_module("yaml")
    root = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {"api": f"127.0.0.1:{stack.api_port}", "worker": f"127.0.0.1:{stack.worker_metrics_port}"}
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
            jobs.append({**job, "static_configs": [{"targets": [targets[job["job_name"]]]}]})
    assert sorted(j["job_name"] for j in jobs) == ["api", "worker"]
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
              "scrape_configs": jobs}
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = proc_tools.free_port()
    log = root / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                cwd=root, env=proc_tools.clean_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        proc_tools.wait_ready(f"{url}/-/ready", proc, log, "prometheus", timeout_s=60)
        yield Prometheus(url)
    finally:
        proc_tools.stop(proc)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from a /metrics page."""
    text = httpx.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def send_traffic(api: str) -> None:
    with httpx.Client(base_url=api, timeout=60) as client:
        for text in ("The game was released in Japan .", "He played for the club .", "The album was a success ."):
            assert client.post("/v1/score", json={"texts": [text]}).status_code == 200
        for text in ("The game ", "The game was "):  # a user typing: the second resumes the first's state
            assert client.post("/v1/next-word", json={"text": text, "k": 3}).status_code == 200
        assert client.post("/v1/generate", json={"prompt": "The film", "max_tokens": 8, "seed": 1}).status_code == 200
        assert client.get("/v1/models").status_code == 200


SCORE_OK = 'sum(rnnlm_requests_total{job="api", endpoint="/v1/score", status="200"})'


@pytest.fixture(scope="module")
def traffic(prometheus: Prometheus, stack) -> dict[tuple[str, tuple], float]:
    """Two rounds of requests, each waited for in Prometheus, so that rates over the last 30 s are
    non-zero; returns the api's own /metrics after them."""
    prometheus.wait("up", lambda r: {(s["metric"]["job"], s["value"][1]) for s in r} == {("api", "1"), ("worker", "1")})
    for _ in range(2):
        send_traffic(stack.api_url)
        exported = scrape(f"{stack.api_url}/metrics")
        want = sum(v for (name, labels), v in exported.items() if name == "rnnlm_requests_total"
                   and dict(labels).get("endpoint") == "/v1/score" and dict(labels).get("status") == "200")
        prometheus.wait(SCORE_OK, lambda r: bool(r) and float(r[0]["value"][1]) == want)  # noqa: B023
    return exported


def test_both_targets_are_up(prometheus: Prometheus, traffic) -> None:
    up = {s["metric"]["job"]: (s["metric"]["instance"], s["value"][1]) for s in prometheus.query("up")}
    assert set(up) == {"api", "worker"}
    assert all(value == "1" for _, value in up.values())


def test_rnnlm_series_arrive_from_both_targets(prometheus: Prometheus, traffic) -> None:
    counts = {s["metric"]["job"]: int(s["value"][1])
              for s in prometheus.query('count by (job) ({__name__=~"rnnlm_.+"})')}
    assert set(counts) == {"api", "worker"} and all(n > 0 for n in counts.values())
    jobs = {s["metric"]["status"] for s in prometheus.query('rnnlm_jobs{job="worker"}')}
    assert jobs == {"queued", "running", "succeeded", "failed", "cancelled"}


def test_what_arrived_is_what_the_api_exported(prometheus: Prometheus, traffic) -> None:
    """Counter values in Prometheus equal the api's own /metrics read after the last request (only
    /metrics itself has been requested since: Prometheus's scrapes)."""
    for name, key in (("rnnlm_requests_total", "endpoint"), ("rnnlm_tokens_scored_total", "model")):
        exported: dict[str, float] = {}
        for (sample, labels), value in traffic.items():
            labels = dict(labels)
            if sample == name and labels.get("endpoint") != "/metrics":
                exported[labels[key]] = exported.get(labels[key], 0.0) + value
        stored = {s["metric"][key]: float(s["value"][1])
                  for s in prometheus.query(f'sum by ({key}) ({name}{{job="api", endpoint!="/metrics"}})')}
        assert stored == exported and exported, name
        assert all(v > 0 for v in stored.values()), name


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    return [(f"{p['title']} [{t['refId']}]", t["expr"]) for p in panels for t in p.get("targets", []) if t.get("expr")]


# Panels that must show data after the traffic above; the others (training) need a training job.
MUST_HAVE_DATA = ("Request rate by endpoint", "Latency quantiles by endpoint", "Tokens per second", "Batch size",
                  "State cache hit rate", "Models loaded", "Jobs by status", "Targets up")


@pytest.mark.parametrize("title, expr", dashboard_expressions(), ids=[t for t, _ in dashboard_expressions()])
def test_dashboard_expression_runs_on_live_data(prometheus: Prometheus, traffic, title: str, expr: str) -> None:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    result = prometheus.query(expr)  # a PromQL error fails here
    if title.split(" [")[0] in MUST_HAVE_DATA:
        values = [float(s["value"][1]) for s in result]
        assert any(math.isfinite(v) for v in values), f"{title}: {expr} -> {result}"


def test_latency_quantile_of_scoring_is_plausible(prometheus: Prometheus, traffic) -> None:
    (p50,) = prometheus.query('histogram_quantile(0.5, sum by (le) (rate(rnnlm_request_duration_seconds_bucket'
                              '{job="api", endpoint="/v1/score"}[30s])))')
    assert 0 < float(p50["value"][1]) < 60
