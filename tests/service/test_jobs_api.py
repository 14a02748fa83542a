"""The jobs API with an in-process worker: submit, serve the result without a restart, cancel, validate, auth."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from service.worker import Worker

KEY = "s3cret-key"


@pytest.fixture
def api(job_settings: Settings):
    with TestClient(create_app(job_settings)) as client:
        yield client


@pytest.fixture
def worker(job_settings: Settings, job_worker) -> Worker:
    return job_worker(job_settings)


def submit(api: TestClient, **body) -> str:
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    assert set(r.json()) == {"id", "status"} and r.json()["status"] == "queued"
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    return r.json()["id"]


def test_train_job_runs_in_the_worker_and_its_model_is_served(api, worker, tiny_job, wait_for):
    job_id = submit(api, type="train", name="fresh", **tiny_job(), optimizer="sgd", lr=1.0, schedule="none",
                    average_from=2)
    queued = api.get(f"/v1/jobs/{job_id}").json()
    assert queued["status"] == "queued" and queued["model"] is None and queued["params"]["emb"] == 16
    assert worker.run(once=True) == 1

    done = api.get(f"/v1/jobs/{job_id}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["model"] == "fresh" and done["result"]["valid_ppl"] > 1
    assert done["progress"]["epoch"] == done["progress"]["epochs"] == 2
    assert done["started_at"] <= done["finished_at"]
    # the registry's watcher picks the new folder up: no restart
    wait_for(lambda: api.get("/v1/models/fresh").status_code == 200, 15, "the new model to be served")
    recipe = api.get("/v1/models/fresh").json()["provenance"]["train_config"]
    assert (recipe["optimizer"], recipe["schedule"], recipe["average_from"]) == ("sgd", "none", 2)
    r = api.post("/v1/score", json={"model": "fresh", "texts": ["The game was released in Japan ."]})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "fresh" and r.json()["results"][0]["logprob"] < 0


def test_distill_job_from_a_served_teacher(api, worker, tiny_job, wait_for):
    params = tiny_job(max_vocab=None)
    job_id = submit(api, type="distill", name="pupil", teacher="teacher", alpha=0.7, **params)
    assert api.get(f"/v1/jobs/{job_id}").json()["params"]["temperature"] == 2.0  # distill defaults filled in
    worker.run(once=True)
    done = api.get(f"/v1/jobs/{job_id}").json()
    assert done["status"] == "succeeded", done["error"]
    card = wait_for(lambda: (r := api.get("/v1/models/pupil")).status_code == 200 and r.json(), 15, "pupil")
    assert card["provenance"]["teacher"] == "teacher"
    assert card["provenance"]["distillation"]["alpha"] == 0.7


def test_cancel_a_running_job(api, worker, tiny_job, job_settings, wait_for, assert_error):
    job_id = submit(api, type="train", name="endless", **tiny_job(epochs=1000, patience=1000))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: (api.get(f"/v1/jobs/{job_id}").json()["progress"] or {}).get("epoch"), 60, "an epoch")
        r = api.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 202, r.text  # accepted: the worker stops at its next step
        assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
        wait_for(lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled", 30, "the cancellation")
    finally:
        worker.stop()
        thread.join(timeout=30)
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["progress"]["epoch"] < 1000 and job["finished_at"] is not None
    assert not (job_settings.checkpoints / "endless").exists()  # a cancelled job publishes nothing
    assert_error(api.post(f"/v1/jobs/{job_id}/cancel"), 409, type_="conflict")


def test_cancel_queued_list_and_lookup(api, tiny_job, assert_error):
    first = submit(api, type="train", name="one", **tiny_job())
    second = submit(api, type="train", name="two", **tiny_job())
    r = api.post(f"/v1/jobs/{first}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"  # a queued job is cancelled at once
    assert_error(api.post(f"/v1/jobs/{first}/cancel"), 409)

    listed = api.get("/v1/jobs").json()["data"]
    assert [j["id"] for j in listed] == [second, first]  # newest first
    assert [j["id"] for j in api.get("/v1/jobs", params={"status": "cancelled"}).json()["data"]] == [first]
    assert [j["id"] for j in api.get("/v1/jobs", params={"status": "queued"}).json()["data"]] == [second]
    assert_error(api.get("/v1/jobs", params={"status": "exploded"}), 422, param="status")
    assert_error(api.get("/v1/jobs/nope"), 404, type_="job_not_found")
    assert_error(api.post("/v1/jobs/nope/cancel"), 404, type_="job_not_found")


def test_job_counts_are_exported(api, tiny_job):
    submit(api, type="train", name="counted", **tiny_job())
    text = api.get("/metrics").text
    assert 'rnnlm_jobs{status="queued"} 1.0' in text and 'rnnlm_jobs{status="running"} 0.0' in text


# ---- bad input ---------------------------------------------------------------------------------
@pytest.fixture
def roots(tmp_path: Path, data_root: Path) -> dict[str, Path]:
    """A private data root with a corpus (and a symlink to it), an empty folder and a symlink out of it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "train.txt").write_text("secret words\n")
    shutil.copytree(data_root / "wt2-400", root / "corpus")
    (root / "alias").symlink_to(root / "corpus")
    (root / "empty").mkdir()
    (root / "link").symlink_to(outside)
    return {"root": root, "outside": outside}


@pytest.fixture
def strict_api(job_settings: Settings, roots):
    with TestClient(create_app(job_settings.model_copy(update={"data_roots": [roots["root"]]}))) as client:
        yield client


@pytest.mark.parametrize("where", ["outside", "dotdot", "symlink", "absolute"])
def test_data_outside_the_roots_is_refused_unread(strict_api, roots, tiny_job, where, monkeypatch, assert_error):
    data = {"outside": str(roots["outside"]), "dotdot": f"{roots['root']}/../outside",
            "symlink": str(roots["root"] / "link"), "absolute": "/etc"}[where]

    def no_peeking(*args):
        raise AssertionError("looked inside a folder outside the data roots")
    monkeypatch.setattr("service.serving.jobs.split_path", no_peeking)
    error = assert_error(strict_api.post("/v1/jobs", json={**tiny_job(), "type": "train", "name": "x", "data": data}),
                         400, param="data")
    assert "outside the allowed data roots" in error["message"]
    assert strict_api.get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize("folder, fragment", [("missing", "no such corpus folder"), ("empty", "has no train.txt")])
def test_data_folder_must_hold_a_corpus(strict_api, roots, tiny_job, folder, fragment, assert_error):
    body = {**tiny_job(), "type": "train", "name": "x", "data": str(roots["root"] / folder)}
    assert fragment in assert_error(strict_api.post("/v1/jobs", json=body), 400, param="data")["message"]


def test_symlink_within_a_root_is_fine(strict_api, roots, tiny_job):
    body = {**tiny_job(), "type": "train", "name": "x", "data": str(roots["root"] / "alias")}
    r = strict_api.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = strict_api.get(f"/v1/jobs/{r.json()['id']}").json()
    assert job["params"]["data"] == str((roots["root"] / "corpus").resolve())  # the worker gets the real path


def test_no_data_roots_no_jobs(job_settings, tiny_job, assert_error):
    with TestClient(create_app(job_settings.model_copy(update={"data_roots": []}))) as client:
        error = assert_error(client.post("/v1/jobs", json={"type": "train", "name": "x", **tiny_job()}), 400)
    assert "RNNLM_DATA_ROOTS" in error["message"]


@pytest.mark.parametrize("name", ["Bad Name", "-dash", "UPPER", "a" * 65, "../escape", ""])
def test_bad_model_name(api, tiny_job, name, assert_error):
    assert_error(api.post("/v1/jobs", json={"type": "train", "name": name, **tiny_job()}), 422, param="name")


def test_existing_model_needs_overwrite(api, tiny_job, assert_error):
    error = assert_error(api.post("/v1/jobs", json={"type": "train", "name": "teacher", **tiny_job()}), 409,
                         param="name")
    assert "overwrite" in error["message"]
    submit(api, type="train", name="teacher", overwrite=True, **tiny_job())
    # and one job per name at a time
    assert_error(api.post("/v1/jobs", json={"type": "train", "name": "teacher", "overwrite": True, **tiny_job()}),
                 409, param="name")


def test_alias_is_not_a_model_name(api, tiny_job, assert_error):
    assert_error(api.post("/v1/jobs", json={"type": "train", "name": "default", **tiny_job()}), 409, param="name")


def test_distill_teacher_must_exist(api, tiny_job, assert_error):
    body = {"type": "distill", "name": "pupil", **tiny_job(max_vocab=None)}
    error = assert_error(api.post("/v1/jobs", json={**body, "teacher": "ghost"}), 404, param="teacher")
    assert "ghost" in error["message"]
    assert_error(api.post("/v1/jobs", json={**body, "teacher": "../teacher"}), 422, param="teacher")
    assert_error(api.post("/v1/jobs", json=body), 422, param="teacher")  # no teacher at all
    assert_error(api.post("/v1/jobs", json={**body, "teacher": "teacher", "max_vocab": 100}), 422, param="max_vocab")


@pytest.mark.parametrize("field, value", [
    ("emb", 0), ("emb", 4097), ("hidden", -1), ("layers", 0), ("layers", 9), ("epochs", 0), ("epochs", 1001),
    ("lr", 0), ("lr", 100), ("dropout", 1.0), ("dropout", -0.1), ("batch_size", 0), ("bptt", 1),
    ("max_vocab", 0), ("train_tokens", 0), ("seed", -1), ("arch", "transformer"), ("epochs", "many"),
    ("teacher", "teacher"), ("alpha", 0.5), ("type", "finetune"), ("surprise", 1), ("optimizer", "rmsprop"),
    ("schedule", "linear"), ("average_from", 0),
])
def test_out_of_range_parameters(api, tiny_job, field, value, assert_error):
    body = {"type": "train", "name": "x", **tiny_job(), field: value}
    assert_error(api.post("/v1/jobs", json=body), 422, param=field)
    assert api.get("/v1/jobs").json()["data"] == []


def test_malformed_body(api, assert_error):
    assert_error(api.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_error(api.post("/v1/jobs", json={"type": "train"}), 422)


# ---- API key -----------------------------------------------------------------------------------
def test_jobs_need_the_key_scoring_does_not(job_settings, tiny_job, assert_error):
    settings = job_settings.model_copy(update={"api_key": SecretStr(KEY)})
    body = {"type": "train", "name": "keyed", **tiny_job()}
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/jobs", json=body)
        assert_error(r, 401, type_="authentication_error")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {KEY}x"}), 403)
        assert_error(client.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401)
        assert_error(client.get("/v1/jobs/anything"), 401)
        assert_error(client.post("/v1/jobs/anything/cancel", headers={"Authorization": "Bearer nope"}), 403)
        auth = {"Authorization": f"Bearer {KEY}"}
        r = client.post("/v1/jobs", json=body, headers=auth)
        assert r.status_code == 202, r.text
        assert client.get(f"/v1/jobs/{r.json()['id']}", headers=auth).status_code == 200
        assert client.post("/v1/score", json={"model": "teacher", "texts": ["a b c"]}).status_code == 200
        assert client.get("/v1/models").status_code == 200
        assert client.get("/health").status_code == 200
