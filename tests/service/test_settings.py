"""Settings from the environment (RNNLM_*) and the `rnnlm serve` address check."""
from __future__ import annotations

from pathlib import Path

import pytest

from service import cli
from service.settings import Settings


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNLM_CHECKPOINTS", "/models")
    monkeypatch.setenv("RNNLM_DEFAULT_MODEL", "gru")
    monkeypatch.setenv("RNNLM_ALIASES", '{"fast": "student"}')
    monkeypatch.setenv("RNNLM_DATA_ROOTS", "/data/a:/data/b")
    monkeypatch.setenv("RNNLM_API_KEY", "s3cret")
    monkeypatch.setenv("RNNLM_MAX_TEXTS", "3")
    monkeypatch.setenv("RNNLM_JOBS_DB", "/var/lib/rnnlm/jobs.db")
    s = Settings()
    assert s.checkpoints == Path("/models")
    assert s.aliases == {"default": "gru", "fast": "student"}
    assert s.data_roots == [Path("/data/a"), Path("/data/b")]
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.max_texts == 3
    assert s.jobs_db == Path("/var/lib/rnnlm/jobs.db")


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHECKPOINTS", "DEFAULT_MODEL", "ALIASES", "API_KEY", "HOST"):
        monkeypatch.delenv(f"RNNLM_{name}", raising=False)
    s = Settings()
    assert s.host == "127.0.0.1" and s.loopback
    assert s.aliases == {"default": "lstm"}
    assert s.api_key is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_serve_refuses_public_address_without_key(host: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("RNNLM_API_KEY", raising=False)
    assert cli.main(["serve", "--host", host]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert host in err and "--api-key" in err and "--insecure" in err


def test_serve_rejects_a_bad_setting(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RNNLM_MAX_TEXTS", "lots")
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "RNNLM_MAX_TEXTS" in err


def test_serve_rejects_a_missing_checkpoint_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--checkpoints", str(tmp_path / "nope")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
