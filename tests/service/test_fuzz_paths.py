"""Symlinks that lead a job out of its folders: every file a job reads (its corpus' splits, SHA256SUMS
and the files it lists) and writes (its run folder, its model folder) is resolved and contained, at
submission and again by the worker right before it reads."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.data import check_corpus_within, corpus_files
from models.errors import DataError
from service.app import create_app
from service.jobs import JobStore
from service.settings import Settings
from service.worker import Worker


@pytest.fixture
def tree(tmp_path: Path, data_root: Path) -> dict[str, Path]:
    """A data root holding a good corpus, and a secret outside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n" * 200)
    shutil.copytree(data_root / "wt2-400", root / "corpus")
    return {"root": root, "outside": outside, "secret": outside / "passwd"}


def corpus_with_link(tree: dict[str, Path], name: str, split_file: str) -> Path:
    folder = tree["root"] / name
    shutil.copytree(tree["root"] / "corpus", folder)
    (folder / split_file).unlink(missing_ok=True)
    (folder / split_file).symlink_to(tree["secret"])
    return folder


@pytest.fixture
def api(job_settings: Settings, tree):
    with TestClient(create_app(job_settings.model_copy(update={"data_roots": [tree["root"]]}))) as client:
        yield client


@pytest.mark.parametrize("split_file", ["train.txt", "valid.txt", "test.txt"])
def test_a_split_linked_out_of_the_root_is_refused(api, tree, tiny_job, split_file):
    folder = corpus_with_link(tree, "evil", split_file)
    r = api.post("/v1/jobs", json={**tiny_job(), "type": "train", "name": "x", "data": str(folder)})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "data" and f"{split_file} resolves to a place outside" in error["message"]
    assert str(tree["secret"]) not in error["message"]  # where the link points is not told
    assert api.get("/v1/jobs").json()["data"] == []


def test_a_file_listed_in_sha256sums_is_contained_too(tree):
    folder = tree["root"] / "sums"
    shutil.copytree(tree["root"] / "corpus", folder)
    (folder / "SHA256SUMS").write_text("0" * 64 + "  ../../outside/passwd\n")
    assert folder / "../../outside/passwd" in corpus_files(folder)
    with pytest.raises(DataError, match="outside the allowed data roots"):
        check_corpus_within(folder, [tree["root"]])


def test_links_inside_the_root_are_fine(tree):
    folder = tree["root"] / "linked"
    folder.mkdir()
    for split in ("train", "valid"):
        (folder / f"{split}.txt").symlink_to(tree["root"] / "corpus" / f"{split}.txt")
    assert check_corpus_within(folder, [tree["root"]]) == folder.resolve()


def test_a_link_planted_after_submission_fails_the_job_unread(api, tree, tiny_job, job_settings):
    folder = tree["root"] / "swapped"
    shutil.copytree(tree["root"] / "corpus", folder)
    r = api.post("/v1/jobs", json={**tiny_job(), "type": "train", "name": "swapped", "data": str(folder)})
    assert r.status_code == 202, r.text
    (folder / "train.txt").unlink()
    (folder / "train.txt").symlink_to(tree["secret"])  # after the API checked it
    store = JobStore(job_settings.jobs_db)
    worker = Worker(store, job_settings.checkpoints, data_roots=[tree["root"]], poll_interval_s=0.05, worker_id="w")
    assert worker.run(once=True) == 1
    job = store.get(r.json()["id"])
    assert job.status == "failed"
    assert "train.txt resolves to a place outside the allowed data roots" in job.error
    assert not (job_settings.checkpoints / "swapped").exists()


def test_without_data_roots_the_worker_keeps_a_job_inside_its_own_folder(tree, tiny_job, job_settings):
    folder = corpus_with_link(tree, "evil", "valid.txt")
    store = JobStore(job_settings.jobs_db)
    job = store.submit("train", "evil", tiny_job(data=str(folder)))
    Worker(store, job_settings.checkpoints, poll_interval_s=0.05, worker_id="w").run(once=True)
    done = store.get(job.id)
    assert done.status == "failed" and "valid.txt resolves to a place outside" in done.error


def test_a_model_folder_linked_out_of_the_checkpoints_is_not_written(tree, tiny_job, job_settings):
    (job_settings.checkpoints / "escape").symlink_to(tree["outside"], target_is_directory=True)
    store = JobStore(job_settings.jobs_db)
    job = store.submit("train", "escape", tiny_job(data=str(tree["root"] / "corpus"), overwrite=True))
    Worker(store, job_settings.checkpoints, data_roots=[tree["root"]], poll_interval_s=0.05,
           worker_id="w").run(once=True)
    done = store.get(job.id)
    assert done.status == "failed" and "outside the checkpoint folder" in done.error
    assert sorted(p.name for p in tree["outside"].iterdir()) == ["passwd"]
