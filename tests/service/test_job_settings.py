"""A job body maps onto TrainConfig / DistillConfig: same choices, defaults and value rules as the CLI."""
import dataclasses

import pytest

from models.config import DistillConfig, TrainConfig, choices, defaults
from service.schemas import JobRequest


def test_every_training_setting_is_reachable_from_a_job():
    job_fields = set(JobRequest.model_fields)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("out", "run_dir"):  # the worker decides where a job's run writes
            assert f.name in job_fields, f.name
    assert {f.name for f in dataclasses.fields(DistillConfig)} <= job_fields
    schema = JobRequest.model_json_schema()["properties"]
    assert tuple(schema["arch"]["enum"]) == choices(TrainConfig, "arch")
    assert schema["epochs"]["default"] == defaults(TrainConfig)["epochs"]


def test_job_request_converts_every_field_explicitly(tmp_path):
    body = {"type": "train", "name": "m", "data": "/corpus", "arch": "gru", "emb": 40, "hidden": 50, "layers": 3,
            "dropout": 0.1, "cutoffs": [100, 500], "context": True, "context_dropout": 0.2, "epochs": 4,
            "batch_size": 8, "bptt": 12, "lr": 0.5, "optimizer": "sgd", "weight_decay": 1e-6, "clip": 0.0,
            "schedule": "cosine", "patience": 9, "seed": 7, "max_vocab": 900, "style": "ptb", "train_tokens": 1000,
            "valid_tokens": 200, "save_dtype": "float16", "init": "base", "average_from": 2}
    cfg = JobRequest(**body).to_train_config(tmp_path / "out", tmp_path / "run", tmp_path / "ckpt")
    for key, value in body.items():
        if key not in ("type", "name", "init"):
            assert getattr(cfg, key) == value, key
    assert cfg.init == str(tmp_path / "ckpt" / "base") and cfg.out == str(tmp_path / "out")
    student = JobRequest(type="distill", name="s", data="/corpus", teacher="t")
    assert student.to_distill_config() == DistillConfig()
    cfg = student.to_train_config("o", "r", "c")
    assert (cfg.emb, cfg.hidden, cfg.layers) == (128, 256, 1)  # a student's default size, as on the CLI


@pytest.mark.parametrize("field, value", [
    ("arch", "transformer"), ("dropout", 1.0), ("bptt", 1), ("lr", 0.0), ("cutoffs", [10, 5]),
    ("optimizer", "rmsprop"), ("style", "html"), ("average_from", 0), ("seed", -1), ("clip", -1.0),
    ("context_dropout", 1.0), ("weight_decay", -1.0), ("init", "../up"),
])
def test_bad_values_are_refused_on_their_field(field, value):
    with pytest.raises(ValueError) as info:
        JobRequest(type="train", name="m", data="d", **{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_tie_means_a_full_softmax():
    assert not JobRequest(type="train", name="m", data="d", tie=True).to_train_config("o", "r", "c").adaptive


@pytest.mark.parametrize("bad", [{"temperature": 0}, {"alpha": 1.5}, {"kd_fraction": 0}])
def test_distill_settings_are_checked_by_distill_config(bad):
    with pytest.raises(ValueError) as info:
        JobRequest(type="distill", name="s", data="d", teacher="t", **bad)
    assert info.value.errors()[0]["loc"] == tuple(bad)
