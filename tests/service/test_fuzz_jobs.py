"""A client retrying a job submission, and the API key kept out of `ps` and away from placeholders."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from service import cli
from service.app import create_app
from service.jobs import SCHEMA, JobStore
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(job_settings: Settings):
    with TestClient(create_app(job_settings)) as client:
        yield client


def test_a_retried_submission_gets_the_same_job(api, tiny_job):
    body = {**tiny_job(), "type": "train", "name": "retried"}
    first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "7f1c-retry"})
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "7f1c-retry"})
    assert again.status_code == 200, again.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert len(api.get("/v1/jobs").json()["data"]) == 1
    # the same request written differently (a default spelt out) is the same request
    spelt = api.post("/v1/jobs", json={**body, "overwrite": False}, headers={"Idempotency-Key": "7f1c-retry"})
    assert spelt.status_code == 200 and spelt.json()["id"] == first.json()["id"]
    # without a key a repeat is a new submission, refused while the first is queued
    assert api.post("/v1/jobs", json=body).status_code == 409


def test_a_key_reused_for_another_request_is_refused(api, tiny_job):
    body = {**tiny_job(), "type": "train", "name": "first"}
    first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    r = api.post("/v1/jobs", json={**body, "epochs": 3}, headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["type"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
    assert first.json()["id"] in error["message"]


def test_the_replay_comes_before_the_name_check(api, tiny_job, job_settings):
    """The retry of a job whose model exists by now still gets that job, not a 409."""
    body = {**tiny_job(), "type": "train", "name": "done"}
    first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-2"})
    (job_settings.checkpoints / "done").mkdir()  # as if the job had succeeded meanwhile
    again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-2"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("key", ["", "a" * 256, "has space"])
def test_a_malformed_key_is_a_422(api, tiny_job, key):
    r = api.post("/v1/jobs", json={**tiny_job(), "type": "train", "name": "x"}, headers={"Idempotency-Key": key})
    assert r.status_code == 422 and r.json()["error"]["param"] == "idempotency-key"


def test_a_database_from_before_idempotency_keys_is_upgraded(tmp_path):
    path = tmp_path / "jobs.db"
    old_schema = SCHEMA.replace(",\n    idempotency_key  TEXT,\n    request_hash     TEXT", "")
    assert "idempotency_key" not in old_schema
    with sqlite3.connect(path) as conn:
        conn.executescript(old_schema)
        conn.execute("INSERT INTO jobs (id, type, name, params, created_at) VALUES ('old', 'train', 'm', '{}', 1)")
    store = JobStore(path)
    assert store.get("old").idempotency_key is None
    job = store.submit("train", "n", {}, idempotency_key="k", request_hash="h")
    assert store.find_idempotent("k", "h").id == job.id


# ---- the API key ----------------------------------------------------------------------------------
def serve(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RNNLM_")}
    return subprocess.run([sys.executable, "-m", "service.cli", "serve", "--port", "1", *args], cwd=REPO,
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_the_key_is_read_from_a_file(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("s3cr3t-s3cr3t-s3cr3t-s3cr3t\n")
    monkeypatch.delenv("RNNLM_API_KEY", raising=False)
    assert Settings(api_key_file=key_file).api_key.get_secret_value() == "s3cr3t-s3cr3t-s3cr3t-s3cr3t"
    monkeypatch.setenv("RNNLM_API_KEY_FILE", str(key_file))
    assert Settings().api_key.get_secret_value() == "s3cr3t-s3cr3t-s3cr3t-s3cr3t"


@pytest.mark.parametrize("content, fragment", [(None, "cannot read the API key file"), ("\n", "is empty")])
def test_a_missing_or_empty_key_file_stops_serve(tmp_path, monkeypatch, capsys, content, fragment):
    monkeypatch.delenv("RNNLM_API_KEY", raising=False)
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    assert cli.main(["serve", "--api-key-file", str(key_file)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err


def test_key_and_key_file_together_are_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "key").write_text("a-long-enough-key-123")
    monkeypatch.setenv("RNNLM_API_KEY", "another-long-key-456")
    assert cli.main(["serve", "--api-key-file", str(tmp_path / "key")]) == 2
    assert "not both" in capsys.readouterr().err


def test_the_plain_flag_warns_that_ps_shows_it(tmp_path):
    proc = serve(["--api-key", "a-long-enough-key-123", "--checkpoints", str(tmp_path / "none")])
    assert "--api-key is deprecated" in proc.stderr and "ps" in proc.stderr


@pytest.mark.parametrize("key", ["change-me", "CHANGE_ME", "short-key"])
def test_a_placeholder_key_is_refused_on_a_public_address(key):
    proc = serve(["--host", "0.0.0.0"], RNNLM_API_KEY=key)
    assert proc.returncode == 2
    assert "placeholder API key" in proc.stderr and key not in proc.stderr


def test_a_short_key_is_fine_on_loopback(tmp_path):
    proc = serve(["--checkpoints", str(tmp_path / "none")], RNNLM_API_KEY="change-me")
    assert "placeholder" not in proc.stderr and "no such checkpoint folder" in proc.stderr


@pytest.mark.parametrize("password, refused", [("change-me-too", True), ("", True), ("admin", True),
                                               ("a-real-grafana-password", False)])
def test_compose_grafana_refuses_the_placeholder_password(password, refused):
    entrypoint = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["grafana"]["entrypoint"]
    command = [part.replace("$$", "$") for part in entrypoint]  # compose's escape for a literal $
    proc = subprocess.run(command, env={"GF_SECURITY_ADMIN_PASSWORD": password, "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=10)
    if refused:
        assert proc.returncode == 1 and "GRAFANA_ADMIN_PASSWORD" in proc.stderr
    else:  # it went on to start Grafana (/run.sh, absent here)
        assert proc.returncode == 127 and "run.sh" in proc.stderr
