"""The Grafana dashboard: valid JSON that Grafana provisions, and every `rnnlm_` series that a panel
queries is one that the service exports (metric families read from prometheus_client's registry
after importing every module of service/; series names derived from each family's type, so
`rnnlm_requests_total` and `rnnlm_request_duration_seconds_bucket` match but `rnnlm_requests` does not).
tests/deploy/test_prometheus_scrape.py also runs every expression against a live Prometheus."""
from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "rnnlm.json"
METRIC = re.compile(r"\brnnlm_\w+")

SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "info": ("_info",), "stateset": ("",),
            "gaugehistogram": ("_bucket", "_gcount", "_gsum"), "unknown": ("",)}


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows hold their panels
    return out


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


DASHBOARD_JSON = json.loads(DASHBOARD.read_text(encoding="utf-8"))
SERIES_USED = sorted({name for _, expr in expressions(DASHBOARD_JSON) for name in METRIC.findall(expr)})


def family_of(series: str) -> str:
    """The metric family a series name belongs to (for the error message)."""
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    """series name -> family type, for every rnnlm_ family defined anywhere in service/."""
    from prometheus_client import REGISTRY

    import service

    for module in pkgutil.walk_packages(service.__path__, "service."):
        importlib.import_module(module.name)
    from service.metrics import JobCounts  # registered at run time (it reads the job database per scrape)

    families = list(REGISTRY.collect()) + list(JobCounts.describe(None))
    return {family.name + suffix: family.type for family in families if family.name.startswith("rnnlm_")
            for suffix in SUFFIXES[family.type]}


def test_dashboard_is_provisionable_json() -> None:
    d = DASHBOARD_JSON
    assert d["uid"] == "rnnlm-serve" and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource_uid = _provisioned_datasource_uid()
    for panel in panels(d):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for ds in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ds == {"type": "prometheus", "uid": datasource_uid}, panel["title"]


def _provisioned_datasource_uid() -> str:
    text = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    return re.search(r"^\s*uid:\s*(\S+)", text, re.M)[1]


def test_dashboard_covers_the_issue() -> None:
    """Request rate and latency quantiles per endpoint, tokens/s, batch size, cache hit rate, jobs by
    status and training loss."""
    exprs = [e for _, e in expressions(DASHBOARD_JSON)]

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert has(r"sum by \(endpoint\) \(rate\(rnnlm_requests_total\[")
    for q in ("0.5", "0.95", "0.99"):
        assert has(rf"histogram_quantile\({q}, sum by \(endpoint, le\) \(rate\(rnnlm_request_duration_seconds_bucket\[")
    assert has(r"rate\(rnnlm_tokens_scored_total\[") and has(r"rate\(rnnlm_tokens_generated_total\[")
    assert has(r"rate\(rnnlm_batch_size_sum\[.*/.*rate\(rnnlm_batch_size_count\[")
    assert has(r"rnnlm_state_cache_hits_total.*/.*rnnlm_state_cache_hits_total.*\+.*rnnlm_state_cache_misses_total")
    assert has(r"by \(status\) \(rnnlm_jobs\)")
    assert has(r"^rnnlm_training_loss$")


@pytest.mark.parametrize("series", SERIES_USED)
def test_every_queried_series_is_exported(series: str, exported: dict[str, str]) -> None:
    similar = sorted(s for s in exported if s.startswith(family_of(series)))
    assert series in exported, f"{series} is not exported (exported: {similar or 'nothing similar'})"

