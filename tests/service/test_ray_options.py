"""The Ray Serve deployment's pieces that need no cluster: options, the replicas' settings, the replica
header, and `rnnlm serve --ray`'s usage errors (the cluster itself: tests/integration/test_ray.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.ray_serve import ReplicaHeader, deployment_options, replica_settings
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_fixed_replicas_or_autoscaling_on_queue_depth():
    fixed = deployment_options(replicas=3)
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    scaled = deployment_options(replicas=2, max_replicas=6, target_ongoing_requests=3, num_cpus=0.5)
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 3}
    assert scaled["ray_actor_options"] == {"num_cpus": 0.5} and scaled["max_ongoing_requests"] >= 1


def test_replicas_get_absolute_paths_and_the_key_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key_file = tmp_path / "key"
    key_file.write_text("a-long-enough-secret-key-123\n")
    settings = Settings(checkpoints="ckpt", jobs_db="jobs/jobs.db", data_roots=["data"], api_key_file=key_file)
    values = replica_settings(settings)
    assert values["checkpoints"] == str(tmp_path / "ckpt") and values["jobs_db"] == str(tmp_path / "jobs/jobs.db")
    assert values["data_roots"] == [str(tmp_path / "data")]
    assert "api_key_file" not in values
    rebuilt = Settings.model_validate(values)  # what each replica does
    assert rebuilt.api_key.get_secret_value() == "a-long-enough-secret-key-123"
    assert rebuilt.checkpoints == Path(values["checkpoints"])


def test_every_response_names_its_replica(settings):
    app = create_app(settings)
    app.add_middleware(ReplicaHeader, value="r1 pid 42")
    with TestClient(app) as client:
        assert client.get("/health").headers["x-replica"] == "r1 pid 42"
        bad = client.post("/v1/score", json={"texts": []})
        assert bad.status_code == 422 and bad.headers["x-replica"] == "r1 pid 42"  # errors too


@pytest.mark.parametrize("flags, message", [
    (["--with-worker"], "--with-worker"),
    (["--replicas", "3", "--max-replicas", "2"], "--max-replicas must be at least --replicas"),
])
def test_serve_ray_usage_errors(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--ray", "--checkpoints", str(tmp_path),
                           *flags], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
