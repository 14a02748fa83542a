"""Datasets over HTTP: upload raw text (raw body or multipart), list, get, delete; bad uploads leave
nothing behind; a job trains on a dataset by name, and an adapt job extends the served model's vocabulary."""
from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings

KEY = "upload-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# A user's domain: product names the WikiText models never saw, in plain sentences.
PRODUCT_LINES = [f"The {name} ships with a {part} and a two year warranty." for name, part in
                 (("Zorbex", "charger"), ("Quillon", "stand"), ("Zorbex", "cable"), ("Vantrel", "case"))] * 10


@pytest.fixture
def upload_settings(job_settings: Settings, tmp_path: Path) -> Settings:
    return job_settings.model_copy(update={"datasets_dir": tmp_path / "datasets", "api_key": SecretStr(KEY),
                                           "max_dataset_bytes": 200_000})


@pytest.fixture
def api(upload_settings: Settings):
    with TestClient(create_app(upload_settings)) as client:
        yield client


def leftovers(settings: Settings) -> list[str]:
    root = Path(settings.datasets_dir)
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def upload(api: TestClient, name: str, text: str | bytes, **params) -> dict:
    body = text.encode() if isinstance(text, str) else text
    r = api.post("/v1/datasets", params={"name": name, **params}, content=body,
                 headers={**AUTH, "Content-Type": "text/plain; charset=utf-8"})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/datasets/{name}"
    return r.json()


def test_upload_normalises_splits_and_counts(api, upload_settings, wikitext2, assert_error):
    raw = "\n".join(f"Line {i}: the product's price was $3,000 (state-of-the-art)." for i in range(50)) + "\n\n"
    info = upload(api, "prices", raw, valid=0.2, test=0.1, seed=3)
    assert info["name"] == "prices" and info["model"] == "teacher" and info["style"] == "wikitext"
    assert info["lines"] == {"train": 35, "valid": 10, "test": 5}  # blank lines dropped, fractions honoured
    assert info["split"] == {"valid": 0.2, "test": 0.1, "seed": 3}
    assert info["tokens"]["train"] == 35 * len("Line 0 : the product 's price was $ 3 @,@ 000 ( state @-@ of @-@ "
                                               "the @-@ art ) .".split())
    assert len(info["sha256"]) == 64 and info["vocab_size"] > 10
    assert set(info["unknown"]) == {"teacher"} and 0 < info["unknown"]["teacher"]["tokens"] < 1
    folder = Path(upload_settings.datasets_dir) / "prices"
    assert (
        (folder / "train.txt").read_text().splitlines()[0].startswith("Line 0 : the product 's price was $ 3 @,@ 000")
    )
    assert {"train.txt", "valid.txt", "test.txt", "SHA256SUMS", "dataset.json"} <= {p.name for p in folder.iterdir()}

    # the same text and seed split the same way
    again = upload(api, "prices-again", raw, valid=0.2, test=0.1, seed=3)
    assert (Path(upload_settings.datasets_dir) / "prices-again" / "test.txt").read_text() == (
        folder / "test.txt"
    ).read_text()
    assert again["sha256"] == info["sha256"]

    listed = api.get("/v1/datasets", headers=AUTH).json()
    assert [d["name"] for d in listed["data"]] == ["prices", "prices-again"]
    assert api.get("/v1/datasets/prices", headers=AUTH).json() == info
    deleted = api.delete("/v1/datasets/prices-again", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json() == again
    assert_error(api.get("/v1/datasets/prices-again", headers=AUTH), 404, "name", "dataset_not_found")
    assert_error(api.delete("/v1/datasets/prices-again", headers=AUTH), 404, "name")
    assert leftovers(upload_settings) == ["prices"]


def test_multipart_upload_of_one_file_or_of_the_splits(api, upload_settings, assert_error):
    text = "\n".join(PRODUCT_LINES)
    r = api.post("/v1/datasets", params={"name": "products", "model": "teacher"}, headers=AUTH,
                 files={"file": ("products.txt", text.encode(), "text/plain")})
    assert r.status_code == 201, r.text
    assert sum(r.json()["lines"].values()) == len(PRODUCT_LINES)
    assert "Zorbex" in r.json()["unknown"]["teacher"]["top"]
    r = api.post("/v1/datasets", params={"name": "splits"}, headers=AUTH,
                 files={"train": ("train.txt", text.encode()), "valid": ("valid.txt", b"The Zorbex ships.\n")})
    assert r.status_code == 201, r.text
    assert r.json()["lines"] == {"train": len(PRODUCT_LINES), "valid": 1, "test": 0}
    assert r.json()["split"] == "as uploaded"
    assert_error(api.post("/v1/datasets", params={"name": "odd"}, headers=AUTH,
                          files={"notes": ("n.txt", b"hello\n")}), 400, "notes")
    assert leftovers(upload_settings) == ["products", "splits"]


@pytest.mark.parametrize("body, what", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "binary"),
    (b"", "empty"),
    (b"   \n\n\t\n", "empty"),
    ("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1") * 5, "UTF-8"),
])
def test_bad_text_is_refused_and_leaves_nothing(api, upload_settings, body, what, assert_error):
    error = assert_error(api.post("/v1/datasets", params={"name": "bad"}, content=body,
                                  headers={**AUTH, "Content-Type": "text/plain"}), 400, "file")
    assert what in error["message"]
    assert leftovers(upload_settings) == []


def test_bad_requests_are_refused_and_leave_nothing(api, upload_settings, assert_error):
    good = "\n".join(PRODUCT_LINES).encode()
    post = lambda body=good, headers=None, **params: api.post(  # noqa: E731
        "/v1/datasets", params=params, content=body, headers={**AUTH, "Content-Type": "text/plain", **(headers or {})})
    assert_error(post(name="big", body=b"word " * 50_000), 413, type_="request_too_large")
    for name in ("../escape", "a/b", "..", ".hidden", "UPPER", "x" * 65):
        assert_error(post(name=name), 422, "name")
    assert_error(post(name="ok", headers={"Content-Type": "application/json"}), 415)
    assert_error(post(name="ok", model="nope"), 404, "model", "model_not_found")
    assert_error(post(name="ok", valid=0.6, test=0.5), 400, "file")
    assert_error(post(name="ok", body=b"one line\ntwo lines\n"), 400, "file")  # too few to split
    assert_error(api.post("/v1/datasets", params={"name": "ok"}, content=good), 401, type_="authentication_error")
    assert_error(api.get("/v1/datasets"), 401)
    assert leftovers(upload_settings) == []
    assert post(name="ok").status_code == 201
    assert_error(post(name="ok"), 409, "name", "conflict")  # the name is taken: the first one stays
    assert leftovers(upload_settings) == ["ok"]
    assert_error(api.get("/v1/datasets/..%2Fx", headers=AUTH), 404)


def test_uploads_are_off_without_a_datasets_dir(job_settings, assert_error):
    with TestClient(create_app(job_settings)) as client:
        assert_error(client.post("/v1/datasets", params={"name": "x"}, content=b"text\n"), 400)
        assert client.get("/v1/datasets").json()["data"] == []


def test_a_job_names_a_dataset_and_an_adapt_job_extends_the_vocabulary(api, upload_settings, wikitext2, wait_for,
                                                                       assert_error, job_worker):
    lines = (wikitext2 / "train.txt").read_text(encoding="utf-8").splitlines()[:300]
    upload(api, "mine", "\n".join(lines + PRODUCT_LINES * 2), seed=1)
    body = dict(type="train", name="adapted", init="teacher", dataset="mine", preset="adapt", extend_vocab=40,
                min_count=3, batch_size=16, bptt=20, epochs=1, dropout=0.0)
    assert_error(api.post("/v1/jobs", json={**body, "dataset": "absent"}, headers=AUTH), 404, "dataset",
                 "dataset_not_found")
    assert_error(api.post("/v1/jobs", json={**body, "data": "/tmp"}, headers=AUTH), 400, "dataset")
    assert_error(api.post("/v1/jobs", json={**body, "init": None}, headers=AUTH), 422)
    r = api.post("/v1/jobs", json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    params = api.get(f"/v1/jobs/{r.json()['id']}", headers=AUTH).json()["params"]
    assert params["dataset"] == "mine" and params["data"].endswith("/mine")
    assert params["lr"] == 5e-4 and params["patience"] == 1 and params["epochs"] == 1  # preset, but epochs given

    assert job_worker(upload_settings).run(once=True) == 1
    done = api.get(f"/v1/jobs/{r.json()['id']}", headers=AUTH).json()
    assert done["status"] == "succeeded", done["error"]
    wait_for(lambda: "adapted" in [m["id"] for m in api.get("/v1/models").json()["data"]], what="adapted served")

    base = api.get("/v1/models/teacher").json()
    adapted = api.get("/v1/models/adapted").json()
    assert adapted["vocab_size"] == base["vocab_size"] + 40  # the 40 most frequent new words
    assert adapted["provenance"]["vocab_extension"]["added"] == 40
    text = "The Quillon ships with a stand and a two year warranty."
    scores = {m: api.post("/v1/score", json={"model": m, "texts": [text]}).json()["results"][0]
              for m in ("teacher", "adapted")}
    assert scores["teacher"]["oov_count"] >= 2 and scores["adapted"]["oov_count"] == 0
    assert scores["adapted"]["logprob"] > scores["teacher"]["logprob"] - 10  # a known word is no free <unk>
