"""schemathesis with every check over the whole OpenAPI document, against a real `rnnlm serve`: no server
error, every status and body as documented, schema-violating requests refused, valid ones accepted,
methods and auth as the document says. A small, seeded run (about a minute)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
KEY = "schemathesis-key-0123456789"
EXAMPLES = os.environ.get("RNNLM_SCHEMATHESIS_EXAMPLES", "5")  # per operation and phase


def test_schemathesis_finds_nothing(tmp_path, tiny_model, proc_tools):
    pytest.importorskip("schemathesis")
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    shutil.copytree(tiny_model, checkpoints / "lstm")
    (tmp_path / "data").mkdir()
    port, log = proc_tools.free_port(), tmp_path / "serve.log"
    # every route that the document says needs the key does; a slow shared machine is not an overload
    env = proc_tools.clean_env(
        RNNLM_API_KEY=KEY,
        RNNLM_API_KEY_INFERENCE="true",
        RNNLM_DATA_ROOTS=str(tmp_path / "data"),
        RNNLM_ADMISSION_MAX_WAIT_MS="10000",
        RNNLM_MAX_TOKENS="32",
        RNNLM_MAX_N="2",
    )
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--checkpoints",
                                 str(checkpoints), "--jobs-db", str(tmp_path / "jobs.db"), "--threads", "1"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        proc_tools.wait_ready(f"{url}/ready", proc, log, "rnnlm serve", timeout_s=90)
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(HERE / "schemathesis.toml"), "--no-color",
             "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", EXAMPLES, "--seed", "1",
             "--workers", "1", "--header", f"Authorization: Bearer {KEY}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        proc_tools.stop(proc)
    report = run.stdout[-12000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "No issues found" in run.stdout or " passed" in run.stdout, report
    assert " 500 " not in log.read_text(), log.read_text()[-4000:]
