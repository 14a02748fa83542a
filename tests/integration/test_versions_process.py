"""Model versions across real processes: `rnnlm serve --with-worker` publishes jobs as versions behind the
promotion gate, and a promotion or rollback from the API process or from `rnnlm models` is served by the
server without a restart."""
from __future__ import annotations

import subprocess
import sys

import httpx

TINY = dict(emb=16, hidden=16, layers=1, max_vocab=500, train_tokens=5000, valid_tokens=2000, batch_size=16,
            bptt=20, dropout=0.0, seed=1)
KEY = "integration-versions-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_jobs_become_versions_behind_the_gate_across_processes(tmp_path, data_root, proc_tools):
    port, wait_for = proc_tools.free_port(), proc_tools.wait_for
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    log = tmp_path / "serve.log"
    env = proc_tools.clean_env(OMP_NUM_THREADS="1", RNNLM_DATA_ROOTS=str(data_root), RNNLM_API_KEY=KEY,
                               RNNLM_RELOAD_INTERVAL_S="0.3", RNNLM_WORKER_POLL_INTERVAL_S="0.2")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--checkpoints",
                                 str(checkpoints), "--jobs-db", str(tmp_path / "jobs.db"), "--with-worker",
                                 "--threads", "1"], env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def job(**body) -> dict:
        body = {"type": "train", "name": "news", "data": str(data_root / "wt2-400"), **TINY, **body}
        r = httpx.post(f"{base}/v1/jobs", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        url = f"{base}/v1/jobs/{r.json()['id']}"
        done = wait_for(lambda: (j := httpx.get(url, headers=AUTH).json())["status"] in ("succeeded", "failed")
                        and j, 120, "the job", proc, log)
        assert done["status"] == "succeeded", done["error"]
        return done["result"]

    def served() -> int | None:
        r = httpx.get(f"{base}/v1/models/news")
        return r.json()["version"] if r.status_code == 200 else None

    try:
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 60, "the server", proc, log)
        assert job(epochs=1)["version"] == 1
        wait_for(lambda: served() == 1, 30, "version 1", proc, log)

        worse = job(epochs=1, lr=1e-6, overwrite=True)
        assert (worse["version"], worse["promoted"]) == (2, False)
        better = job(epochs=3, overwrite=True)
        assert (better["version"], better["promoted"]) == (3, True)
        wait_for(lambda: served() == 3, 30, "version 3, promoted by the worker", proc, log)
        versions = httpx.get(f"{base}/v1/models/news").json()["versions"]
        assert [(v["version"], v["current"], v["promoted"]) for v in versions] == [
            (1, False, True), (2, False, False), (3, True, True)]

        r = httpx.post(f"{base}/v1/models/news/rollback", headers=AUTH)
        assert r.status_code == 200 and r.json()["version"] == 1

        # the command line on the same folder, beside the running server and worker
        cli = subprocess.run([sys.executable, "-m", "service.cli", "models", "promote", "news", "2", "--force",
                              "--checkpoints", str(checkpoints)], env=env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        wait_for(lambda: served() == 2, 30, "version 2, forced by rnnlm models", proc, log)
        r = httpx.post(f"{base}/v1/score", json={"model": "news", "texts": ["The game was released ."]})
        assert r.status_code == 200, r.text
    finally:
        proc_tools.stop(proc, timeout_s=60)
