"""Model versions through the API with an in-process worker: a job under an existing name becomes a new
version, served only through the promotion gate (or a forced promotion); rollback; the admin routes' key."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr

from service.app import create_app
from service.jobs import JobStore
from service.settings import Settings
from service.worker import Worker

KEY = "versions-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "The game was released in Japan ."


@pytest.fixture
def api(job_settings: Settings):
    settings = job_settings.model_copy(update={"api_key": SecretStr(KEY)})
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def worker(job_settings: Settings) -> Worker:
    return Worker(JobStore(job_settings.jobs_db), job_settings.checkpoints, poll_interval_s=0.05)


def run_job(api: TestClient, worker: Worker, **body) -> dict:
    r = api.post("/v1/jobs", json={"type": "train", "name": "teacher", "overwrite": True, **body}, headers=AUTH)
    assert r.status_code == 202, r.text
    assert worker.run(once=True) == 1
    done = api.get(f"/v1/jobs/{r.json()['id']}", headers=AUTH).json()
    assert done["status"] == "succeeded", done["error"]
    return done


def logprob(api: TestClient) -> float:
    r = api.post("/v1/score", json={"model": "teacher", "texts": [TEXT]})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["logprob"]


def assert_error(response, status: int, type_: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param"} and error["type"] == type_ and error["message"]
    return error


def test_a_worse_job_under_an_existing_name_does_not_replace_it(api, worker, tiny_job):
    before = api.get("/v1/models/teacher").json()
    assert before["version"] == 1 and [v["version"] for v in before["versions"]] == [1]
    served = logprob(api)
    refused_before = REGISTRY.get_sample_value("rnnlm_model_versions_published_total", {"promoted": "false"}) or 0

    done = run_job(api, worker, **tiny_job(epochs=1, lr=1e-6))  # learns nothing: near-uniform
    assert (done["result"]["version"], done["result"]["promoted"]) == (2, False)
    assert "is worse than version 1's" in done["result"]["promotion"]
    assert REGISTRY.get_sample_value("rnnlm_model_versions_published_total", {"promoted": "false"}) == \
        refused_before + 1

    api.app.state.registry.reload()  # what the watcher does every reload interval
    card = api.get("/v1/models/teacher").json()
    assert card["version"] == 1 and logprob(api) == served  # still the old version
    v1, v2 = card["versions"]
    assert (v1["version"], v1["current"], v1["promoted"]) == (1, True, True)
    assert (v2["version"], v2["current"], v2["promoted"]) == (2, False, False)
    assert v2["valid_ppl"] > v1["valid_ppl"] and v2["reason"] == done["result"]["promotion"]
    assert v2["source"]["job"] == done["id"] and v2["source"]["type"] == "train"
    assert v2["provenance"]["corpus_sha256"] == v1["provenance"]["corpus_sha256"]
    listed = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    assert listed["teacher"]["version"] == 1 and "versions" not in listed["teacher"]


def test_a_better_job_is_served_without_a_restart_and_rollback_restores_the_old_one(api, worker, tiny_job,
                                                                                     wait_for):
    served = logprob(api)
    done = run_job(api, worker, **tiny_job(epochs=3))  # two more epochs than the teacher had
    assert (done["result"]["version"], done["result"]["promoted"]) == (2, True), done["result"]
    # the registry's watcher sees the pointer move: no restart
    wait_for(lambda: api.get("/v1/models/teacher").json()["version"] == 2, 15, "version 2 to be served")
    assert logprob(api) != served  # another model answers
    card = api.get("/v1/models/teacher").json()
    assert [(v["version"], v["current"]) for v in card["versions"]] == [(1, False), (2, True)]

    r = api.post("/v1/models/teacher/rollback", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1  # served before the answer
    assert [v["current"] for v in r.json()["versions"]] == [True, False]
    assert logprob(api) == served
    assert_error(api.post("/v1/models/teacher/rollback", headers=AUTH), 409, "conflict")  # nothing earlier

    r = api.post("/v1/models/teacher/versions/2/promote", headers=AUTH)  # passes the gate again
    assert r.status_code == 200 and r.json()["version"] == 2
    r = api.post("/v1/models/teacher/rollback", json={"version": 1}, headers=AUTH)
    assert r.status_code == 200 and r.json()["version"] == 1


def test_force_promotes_a_refused_version(api, worker, tiny_job):
    run_job(api, worker, **tiny_job(epochs=1, lr=1e-6))
    served = logprob(api)
    error = assert_error(api.post("/v1/models/teacher/versions/2/promote", json={"force": False}, headers=AUTH),
                         409, "promotion_refused")
    assert "version 2 of 'teacher' was not promoted: validation perplexity" in error["message"]
    assert api.get("/v1/models/teacher").json()["version"] == 1

    r = api.post("/v1/models/teacher/versions/2/promote", json={"force": True}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and logprob(api) != served
    assert api.get("/v1/models/default").json()["version"] == 2  # the alias follows the name
    r = api.post("/v1/models/teacher/rollback", headers=AUTH)
    assert r.json()["version"] == 1 and logprob(api) == served


def test_a_job_on_another_vocabulary_is_not_compared(api, worker, tiny_job):
    done = run_job(api, worker, **tiny_job(epochs=3, max_vocab=300))
    assert not done["result"]["promoted"] and "vocabulary differs" in done["result"]["promotion"]


def test_admin_routes_need_the_key_and_check_their_input(api, worker, tiny_job):
    run_job(api, worker, **tiny_job(epochs=1, lr=1e-6))
    for path in ("/v1/models/teacher/versions/2/promote", "/v1/models/teacher/rollback"):
        assert_error(api.post(path, json={}), 401, "authentication_error")
        assert_error(api.post(path, json={}, headers={"Authorization": "Bearer wrong"}), 403, "permission_error")
    assert api.get("/v1/models/teacher").status_code == 200  # reading needs no key
    assert api.get("/v1/models/teacher").json()["version"] == 1

    error = assert_error(api.post("/v1/models/teacher/versions/9/promote", headers=AUTH), 404, "version_not_found")
    assert error["param"] == "version" and "no version 9" in error["message"]
    assert_error(api.post("/v1/models/nope/versions/2/promote", headers=AUTH), 404, "model_not_found")
    assert_error(api.post("/v1/models/nope/rollback", headers=AUTH), 404, "model_not_found")
    assert_error(api.post("/v1/models/teacher/versions/0/promote", headers=AUTH), 422, "invalid_request_error")
    assert_error(api.post("/v1/models/teacher/versions/two/promote", headers=AUTH), 422, "invalid_request_error")
    assert_error(api.post("/v1/models/teacher/versions/2/promote", json={"force": 1}, headers=AUTH), 422,
                 "invalid_request_error")
    assert_error(api.post("/v1/models/teacher/rollback", json={"to": 1}, headers=AUTH), 422, "invalid_request_error")
    assert_error(api.post("/v1/models/teacher/rollback", json={"version": 5}, headers=AUTH), 404,
                 "version_not_found")
    assert api.get("/v1/models/teacher").json()["version"] == 1  # nothing changed


def test_a_new_name_is_its_first_version(api, worker, tiny_job, wait_for):
    done = run_job(api, worker, **{**tiny_job(epochs=1), "name": "fresh", "overwrite": False})
    assert (done["result"]["version"], done["result"]["promoted"]) == (1, True)
    card = wait_for(lambda: (r := api.get("/v1/models/fresh")).status_code == 200 and r.json(), 15, "fresh")
    [first] = card["versions"]
    assert first["current"] and first["source"]["job"] == done["id"] and first["reason"].startswith("the first")
