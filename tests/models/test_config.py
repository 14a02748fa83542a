"""Training settings have one source: TrainConfig / DistillConfig give the CLI flags (and the job body)."""
import argparse
import dataclasses
import typing

import pytest

from models.cli import add_commands, train_config
from models.config import DistillConfig, SettingError, TrainConfig, choices, defaults


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlm")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _subparser(name: str):
    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[name]


def _flags(name: str) -> dict:
    return {a.dest: a for a in _subparser(name)._actions}


def test_cli_flags_take_their_choices_and_defaults_from_the_config():
    flags = _flags("train")
    for f in dataclasses.fields(TrainConfig):
        assert f.name in flags, f"--{f.name} missing"
        if choices(TrainConfig, f.name) is not None:
            assert tuple(flags[f.name].choices) == choices(TrainConfig, f.name)
        if f.name not in ("data", "out"):
            assert flags[f.name].default == defaults(TrainConfig)[f.name], f.name
    distill = _flags("distill")
    for f in dataclasses.fields(DistillConfig):
        assert distill[f.name].default == defaults(DistillConfig)[f.name]


@pytest.mark.parametrize("field, value", [
    ("arch", "transformer"), ("dropout", 1.0), ("bptt", 1), ("lr", 0.0), ("cutoffs", [10, 5]),
    ("optimizer", "rmsprop"), ("style", "html"), ("average_from", 0), ("seed", -1), ("clip", -1.0),
])
def test_bad_values_are_refused_by_the_config_and_the_cli(field, value, tmp_path):
    with pytest.raises(SettingError) as info:
        TrainConfig(data="d", out="o", **{field: value})
    assert info.value.name == field
    flag = "--" + field.replace("_", "-")
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--data", "d", "--out", "o", flag, text])
    assert exit_info.value.code == 2


def test_tie_means_a_full_softmax_everywhere():
    assert not TrainConfig(data="d", out="o", tie=True).adaptive
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--tie"])
    assert not train_config(args).adaptive


def test_distill_settings_are_checked_once():
    for bad in ({"temperature": 0}, {"alpha": 1.5}, {"kd_fraction": 0}):
        with pytest.raises(SettingError):
            DistillConfig(**bad)
    assert typing.get_args(typing.get_type_hints(TrainConfig)["schedule"]) == ("plateau", "cosine", "none")
