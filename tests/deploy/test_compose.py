"""docker-compose.yml: valid against the Compose Specification, and the deployment it describes.

CI has no Docker daemon, so the file is validated against the compose-spec JSON schema (the copy
that the `check-jsonschema` package ships, Apache-2.0) after compose-style substitution of
.env.example; `docker compose config` runs too where the compose plugin exists.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE, ENV_EXAMPLE = REPO / "docker-compose.yml", REPO / ".env.example"
PROMETHEUS_CONFIG, GRAFANA = REPO / "docker" / "prometheus.yml", REPO / "docker" / "grafana"

SERVICES = {"api", "worker", "prometheus", "grafana", "api-gpu", "worker-gpu", "lb"}  # profiles gpu and scale
VOLUMES = {"checkpoints", "jobs", "prometheus-data", "grafana-data", "postgres-data"}
SERVICES |= {"postgres"}  # profile postgres


@pytest.fixture(scope="module")
def compose_schema(need_module) -> dict:
    need_module("jsonschema")
    need_module("check_jsonschema")
    path = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(path.read_text(encoding="utf-8"))


def schema_errors(schema: dict, document: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]


def test_schema_catches_a_broken_file(compose_schema: dict, compose: dict) -> None:
    """The validator is live: a misspelt key and a number where compose wants a duration are reported."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["restrat"] = "always"
    broken["services"]["worker"]["healthcheck"]["interval"] = 15
    errors = schema_errors(compose_schema, broken)
    assert any("restrat" in e for e in errors)
    assert any(e.startswith("services/worker/healthcheck/interval") for e in errors)


def test_compose_file_matches_the_compose_spec(compose_schema: dict, raw_compose: dict, compose: dict) -> None:
    assert schema_errors(compose_schema, raw_compose) == []  # as written (what editors check)
    assert schema_errors(compose_schema, compose) == []      # as compose sees it with .env.example


def test_docker_compose_config(proc_tools) -> None:
    """The real parser, where the compose plugin exists (not in CI: no Docker there)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("`docker compose` plugin not installed; the schema test covers the file")
    proc = subprocess.run([docker, "compose", "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "config",
                           "--quiet"], capture_output=True, text=True, cwd=REPO, env=proc_tools.clean_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_four_services_with_health_checks_and_restart_policies(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    for name, svc in services.items():
        check = svc.get("healthcheck")
        assert check and not check.get("disable") and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert svc.get("restart") in ("unless-stopped", "always"), name


def test_api_and_worker_run_the_same_image_with_commands_the_cli_accepts(compose: dict) -> None:
    from service.cli import build_parser

    api, worker = compose["services"]["api"], compose["services"]["worker"]
    assert api["image"] == worker["image"] and api["build"] == worker["build"]
    assert api["build"]["dockerfile"] == "docker/Dockerfile"
    assert (REPO / api["build"]["context"] / api["build"]["dockerfile"]).is_file()
    parser = build_parser()
    serve = parser.parse_args(api["command"])
    assert serve.command == "serve" and serve.host == "0.0.0.0" and not serve.insecure
    work = parser.parse_args(worker["command"])
    assert work.command == "worker" and work.metrics_host == "0.0.0.0"


def _mounts(svc: dict) -> dict[str, str]:
    """container path -> source, from the short volume syntax."""
    out = {}
    for spec in svc.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


def test_named_volumes_shared_by_api_and_worker_at_the_configured_paths(compose: dict) -> None:
    assert set(compose["volumes"]) == VOLUMES
    for name in ("api", "worker"):
        svc = compose["services"][name]
        env, mounts = svc["environment"], _mounts(svc)
        assert mounts[env["RNNLM_CHECKPOINTS"]] == "checkpoints", name
        assert mounts[str(PurePosixPath(env["RNNLM_JOBS_DB"]).parent)] == "jobs", name
        roots = env["RNNLM_DATA_ROOTS"].split(":")
        assert all(root in mounts for root in roots), name
    assert _mounts(compose["services"]["prometheus"])["/prometheus"] == "prometheus-data"
    assert _mounts(compose["services"]["grafana"])["/var/lib/grafana"] == "grafana-data"
    used = {src for svc in compose["services"].values() for src in _mounts(svc).values()
            if not src.startswith((".", "/"))}
    assert used == VOLUMES


def test_bind_mounts_exist_in_the_repository(compose: dict) -> None:
    for name in ("prometheus", "grafana"):
        for target, source in _mounts(compose["services"][name]).items():
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name}: {source} -> {target}"
    prom = compose["services"]["prometheus"]
    config = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    assert _mounts(prom)[config] == "./docker/prometheus.yml"


def _published(compose: dict) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for name, svc in compose["services"].items():
        for spec in svc.get("ports", []):
            assert isinstance(spec, str), f"{name}: use the short 'IP:HOST:CONTAINER' syntax"
            out.setdefault(name, []).append(spec.rsplit(":", 2))
    return out


def test_published_ports_bind_loopback_only(compose: dict, raw_compose: dict, substitute) -> None:
    bare = substitute(raw_compose, {"RNNLM_API_KEY": "k", "GRAFANA_ADMIN_PASSWORD": "p"})  # no other setting
    for document in (compose, bare):
        published = _published(document)
        assert sorted(published) == ["api", "api-gpu", "grafana", "lb", "prometheus"]  # workers' metrics stay inside
        for name, ports in published.items():
            assert all(len(p) == 3 and p[0] == "127.0.0.1" for p in ports), f"{name}: {ports} not on 127.0.0.1"
        assert published["api"] == [["127.0.0.1", "8000", "8000"]]
        assert published["api-gpu"] == [["127.0.0.1", "8001", "8000"]]
        assert published["grafana"] == [["127.0.0.1", "3000", "3000"]]
        assert published["prometheus"] == [["127.0.0.1", "9090", "9090"]]
        assert published["lb"] == [["127.0.0.1", "8080", "8080"]]


def test_worker_metrics_port_is_exposed_on_the_compose_network(compose: dict) -> None:
    worker = compose["services"]["worker"]
    port = worker["environment"]["RNNLM_WORKER_METRICS_PORT"]
    assert [str(p) for p in worker["expose"]] == [port]
    assert "ports" not in worker


def test_prometheus_scrapes_the_compose_services(compose: dict, need_module) -> None:
    yaml = need_module("yaml")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    api_port = int(compose["services"]["api"]["environment"]["RNNLM_PORT"])
    worker_port = int(compose["services"]["worker"]["environment"]["RNNLM_WORKER_METRICS_PORT"])
    for job, service, port in (("api", "api", api_port), ("worker", "worker", worker_port)):
        (sd,) = jobs[job]["dns_sd_configs"]  # every replica, not one of them at random
        assert sd["names"] == [service] and sd["port"] == port and sd.get("type", "SRV") == "A"
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"


def test_the_api_key_comes_from_the_environment_and_is_required(raw_compose: dict, env_example: dict,
                                                                substitute) -> None:
    assert raw_compose["services"]["api"]["environment"]["RNNLM_API_KEY"].startswith("${RNNLM_API_KEY:?")
    assert env_example["RNNLM_API_KEY"] == "change-me"
    without = {k: v for k, v in env_example.items() if k != "RNNLM_API_KEY"}
    with pytest.raises(ValueError, match="RNNLM_API_KEY"):
        substitute(raw_compose, without)
    with pytest.raises(ValueError, match="RNNLM_API_KEY"):
        substitute(raw_compose, {**without, "RNNLM_API_KEY": ""})


def test_env_example_documents_every_variable(raw_compose: dict, env_example: dict, substitute) -> None:
    used: set[str] = set()
    substitute(raw_compose, env_example, used)
    passed_through = {k for svc in raw_compose["services"].values()
                      for k, v in (svc.get("environment") or {}).items() if v is None}
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    for name in sorted(used | passed_through):
        assert re.search(rf"^#?\s*{name}=", text, re.M), f"{name} is not in .env.example"
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_service_settings_are_valid(compose: dict, env_example: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each container's RNNLM_* environment, optional settings set as .env.example suggests, is accepted
    by the service's Settings."""
    from service.settings import Settings

    suggested = {m[1]: m[2] for m in re.finditer(r"^#\s*(RNNLM_\w+)=(\S+)", ENV_EXAMPLE.read_text(), re.M)}
    for name in ("api", "worker"):
        env = compose["services"][name]["environment"]
        for key, value in env.items():
            value = env_example.get(key, suggested.get(key)) if value is None else value
            assert value is not None, f"{name}: {key} has no value and no suggestion in .env.example"
            monkeypatch.setenv(key, str(value))
        settings = Settings()
        assert str(settings.checkpoints) == env["RNNLM_CHECKPOINTS"]
        if name == "api":
            assert settings.api_key is not None and settings.port == 8000
        else:
            assert settings.worker_metrics_port == int(env["RNNLM_WORKER_METRICS_PORT"])
        for key in env:
            monkeypatch.delenv(key)


def test_grafana_is_provisioned_from_the_repository(compose: dict, need_module) -> None:
    yaml = need_module("yaml")
    grafana = compose["services"]["grafana"]
    mounts = _mounts(grafana)
    for kind in ("datasources", "dashboards"):
        assert mounts[f"/etc/grafana/provisioning/{kind}"] == f"./docker/grafana/provisioning/{kind}"
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert compose["services"]["prometheus"]["ports"][0].endswith(":9090")
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/rnnlm.yml").read_text())["providers"]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == "./docker/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (GRAFANA / "dashboards" / PurePosixPath(home).name).is_file()
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "change-me-too"


def test_healthchecks_probe_the_live_processes(compose: dict, stack, proc_tools) -> None:
    """The api and worker health checks, run as the container runs them, pass against live processes
    and fail when nothing listens."""
    for name, env in (("api", {"RNNLM_PORT": str(stack.api_port)}),
                      ("worker", {"RNNLM_WORKER_METRICS_PORT": str(stack.worker_metrics_port)})):
        kind, program, *args = compose["services"][name]["healthcheck"]["test"]
        assert kind == "CMD" and program == "python"
        ok = subprocess.run([sys.executable, *args], env=proc_tools.clean_env(**env), capture_output=True, timeout=30)
        assert ok.returncode == 0, (name, ok.stderr)
        dead = {key: "9" for key in env}  # the discard port: nothing listens there
        bad = subprocess.run([sys.executable, *args], env=proc_tools.clean_env(**dead), capture_output=True, timeout=30)
        assert bad.returncode != 0, name


def test_postgres_profile_holds_the_job_store(compose: dict, raw_compose: dict, env_example: dict,
                                               substitute) -> None:
    """`--profile postgres` with .env.example's three lines: api and worker on a PostgreSQL job store that
    only the compose network reaches; without them, jobs.db on the jobs volume as before."""
    from service.jobs import parse_location
    from service.settings import Settings

    pg = compose["services"]["postgres"]
    assert pg["profiles"] == ["postgres"] and "ports" not in pg
    assert _mounts(pg)["/var/lib/postgresql/data"] == "postgres-data"
    assert pg["healthcheck"]["test"][:2] == ["CMD", "pg_isready"] and pg["restart"] == "unless-stopped"
    for name in ("api", "worker"):
        svc = compose["services"][name]
        assert svc["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}, name
        assert parse_location(svc["environment"]["RNNLM_JOBS_DB"])[0] == "sqlite", name
    lines = dict(re.findall(r"^#\s*(COMPOSE_PROFILES|POSTGRES_PASSWORD|RNNLM_JOBS_DB)=(\S*)$", ENV_EXAMPLE.read_text(),
                            re.M))
    assert lines["COMPOSE_PROFILES"] == "postgres" and lines["POSTGRES_PASSWORD"] == ""
    with_pg = substitute(raw_compose, {**env_example, "RNNLM_JOBS_DB": lines["RNNLM_JOBS_DB"],
                                       "POSTGRES_PASSWORD": "a-real-password"})
    server = with_pg["services"]["postgres"]["environment"]
    for name in ("api", "worker"):
        svc = with_pg["services"][name]
        env = svc["environment"]
        url = Settings(jobs_db=env["RNNLM_JOBS_DB"]).jobs_db
        assert parse_location(url)[0] == "postgresql", name
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.username, parts.password, parts.path) == \
            ("postgres", 5432, server["POSTGRES_USER"], None, "/" + server["POSTGRES_DB"]), name
        assert env["PGPASSWORD"] == server["POSTGRES_PASSWORD"] == "a-real-password", name  # not in the URL
        runs = PurePosixPath(env["RNNLM_JOB_RUNS_DIR"])  # resumable runs on the shared jobs volume
        assert _mounts(svc)[str(runs.parent)] == "jobs", name
    assert re.search(r"^RUN pip install \.\[postgres\]", (REPO / "docker" / "Dockerfile").read_text(), re.M)  # psycopg


def test_gpu_profile_runs_api_and_worker_on_a_reserved_gpu(compose: dict) -> None:
    """`--profile gpu`: the same services on an NVIDIA GPU, from an image built with CUDA wheels of torch."""
    from service.settings import Settings

    services = compose["services"]
    for name, base in (("api-gpu", "api"), ("worker-gpu", "worker")):
        svc, cpu = services[name], services[base]
        assert svc["profiles"] == ["gpu"] and "profiles" not in cpu
        assert svc["command"] == cpu["command"] and svc["volumes"] == cpu["volumes"]
        assert svc["environment"]["RNNLM_DEVICE"] == "cuda"
        assert Settings(device=svc["environment"]["RNNLM_DEVICE"]).device == "cuda"
        assert {k: v for k, v in svc["environment"].items() if k != "RNNLM_DEVICE"} == \
            {k: v for k, v in cpu["environment"].items() if k != "RNNLM_DEVICE"}
        device = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        assert "deploy" not in cpu
        assert svc["image"].endswith("-cuda") and "/whl/cu" in svc["build"]["args"]["TORCH_INDEX"]
        assert svc["build"]["dockerfile"] == cpu["build"]["dockerfile"]
    assert "ARG TORCH_INDEX" in (REPO / "docker" / "Dockerfile").read_text()


def test_scale_profile_balances_the_api_replicas_behind_nginx(compose: dict) -> None:
    """`--profile scale --scale api=N`: nginx on one address, proxying to every replica of `api`."""
    lb = compose["services"]["lb"]
    assert lb["profiles"] == ["scale"] and "profiles" not in compose["services"]["api"]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    source = _mounts(lb)["/etc/nginx/nginx.conf"]
    config = (REPO / source).read_text(encoding="utf-8")
    port = compose["services"]["api"]["environment"]["RNNLM_PORT"]
    assert re.search(rf"set \$api http://api:{port};\s*#.*\n\s*proxy_pass \$api;", config)  # resolved per request
    assert "resolver 127.0.0.11" in config and "proxy_buffering off" in config  # Docker's DNS; SSE streams
    listen = re.search(r"listen (\d+);", config).group(1)
    assert lb["ports"][0].rsplit(":", 1)[1] == listen
    assert "/lb-health" in lb["healthcheck"]["test"][-1] and "location = /lb-health" in config
