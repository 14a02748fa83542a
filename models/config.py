"""Training and distillation settings: the one place their defaults and allowed values live.

The `rnnlm train` / `rnnlm distill` flags and the HTTP job body are derived from these dataclasses
(choices from the `Literal` types, defaults from the fields, values checked by `check_setting`), so
a setting is never described twice.
"""
from __future__ import annotations

import os
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from models.device import DEVICE_HELP, Amp, valid_device
from models.rnnlm import ModelConfig

Arch = Literal["lstm", "gru", "rnn"]
Optimizer = Literal["adam", "sgd"]
Schedule = Literal["plateau", "cosine", "none"]
Style = Literal["wikitext", "ptb", "none"]
SaveDtype = Literal["float32", "float16"]
Preset = Literal["none", "adapt"]

MAX_SEED = 2**63 - 1


def _increasing(values: list[int]) -> bool:
    return all(v > 0 for v in values) and list(values) == sorted(set(values))


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


# value rules: (accepts, what an accepted value is); Literal fields are checked against their choices
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "emb": (lambda v: v >= 1, ">= 1"), "hidden": (lambda v: v >= 1, ">= 1"), "layers": (lambda v: v >= 1, ">= 1"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"), "context_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "cutoffs": (_increasing, "increasing positive integers"),
    "epochs": (lambda v: v >= 1, ">= 1"), "batch_size": (lambda v: v >= 1, ">= 1"), "bptt": (lambda v: v >= 2, ">= 2"),
    "lr": (lambda v: 0 < v < 100, "in (0, 100)"), "weight_decay": (lambda v: v >= 0, ">= 0"),
    "clip": (lambda v: v >= 0, ">= 0 (0 = off)"), "patience": (lambda v: v >= 1, ">= 1"),
    "seed": (lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]"),
    "max_vocab": (_optional(lambda v: v >= 2), ">= 2"), "train_tokens": (_optional(lambda v: v >= 1), ">= 1"),
    "valid_tokens": (_optional(lambda v: v >= 1), ">= 1"), "average_from": (_optional(lambda v: v >= 1), ">= 1"),
    # distillation
    "temperature": (lambda v: v > 0, "> 0"), "alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "kd_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "device": (valid_device, DEVICE_HELP),
    "extend_vocab": (lambda v: v >= 0, ">= 0"), "min_count": (lambda v: v >= 1, ">= 1"),
}


class SettingError(ValueError):
    """A training or distillation setting has a value outside its allowed range or choices."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name} {message}")
        self.name = name
        self.reason = message


def choices(cls: type, name: str) -> tuple | None:
    """The allowed values of a `Literal` field of `cls`, or None for any other field."""
    hint = typing.get_type_hints(cls)[name]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def defaults(cls: type) -> dict[str, Any]:
    """Each field's default (fields without one are left out)."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def check_setting(cls: type, name: str, value: Any) -> Any:
    """`value` if it is allowed for the field `name` of `cls`; otherwise a SettingError saying why."""
    allowed = choices(cls, name)
    if allowed is not None and value not in allowed:
        raise SettingError(name, f"must be one of {', '.join(allowed)}; got {value!r}")
    rule = RULES.get(name)
    if rule is not None and not rule[0](value):
        raise SettingError(name, f"must be {rule[1]}; got {value!r}")
    return value


def _check_all(obj: Any) -> None:
    for f in fields(obj):
        check_setting(type(obj), f.name, getattr(obj, f.name))


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: Arch = "lstm"
    emb: int = 256
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.3
    tie: bool = False       # tied input/output embeddings; implies a full softmax (adaptive is turned off)
    adaptive: bool = True
    cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
    context: bool = False
    context_dropout: float = 0.3
    epochs: int = 10
    batch_size: int = 64
    bptt: int = 35
    lr: float = 2e-3
    optimizer: Optimizer = "adam"
    weight_decay: float = 0.0
    clip: float = 0.25
    schedule: Schedule = "plateau"
    patience: int = 3
    seed: int = 1234
    max_vocab: int | None = None
    style: Style = "wikitext"
    train_tokens: int | None = None
    valid_tokens: int | None = None
    run_dir: str | None = None
    save_dtype: SaveDtype = "float32"
    init: str | None = None
    average_from: int | None = None
    device: str = "auto"   # where to train (models.device): auto, cpu, cuda or cuda:N
    amp: Amp = "none"      # bf16: autocast the forward pass to bf16 (the loss stays fp32)
    preset: Preset = "none"  # adapt: small-corpus fine-tune defaults (models.adapt.ADAPT_PRESET)
    extend_vocab: int = 0    # with init: add up to N of the corpus' new words to the vocabulary
    min_count: int = 3       # ... those seen at least this often in the training split

    def __post_init__(self) -> None:
        self.cutoffs = list(self.cutoffs)
        _check_all(self)
        if self.tie:
            self.adaptive = False  # the tied decoder is the full softmax
        if self.extend_vocab and not self.init:
            raise SettingError("extend_vocab", "needs init (the model whose vocabulary is extended)")
        if self.preset != "none" and not self.init:
            raise SettingError("preset", f"{self.preset} needs init (the model to adapt)")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(arch=self.arch, vocab_size=vocab_size, emb=self.emb, hidden=self.hidden,
                           layers=self.layers, dropout=self.dropout, tie=self.tie, adaptive=self.adaptive,
                           cutoffs=list(self.cutoffs), context=self.context,
                           context_dropout=self.context_dropout)

    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return cache / "rnnlm" / "runs" / Path(self.out).resolve().as_posix().strip("/").replace("/", "__")

    def adopt(self, model: ModelConfig, style: str) -> TrainConfig:
        """This config with the architecture (and tokenizer style) of an existing model."""
        return replace(self, arch=model.arch, emb=model.emb, hidden=model.hidden, layers=model.layers,
                       tie=model.tie, adaptive=model.adaptive, cutoffs=list(model.cutoffs), context=model.context,
                       style=style)


# A student is smaller than the models `rnnlm train` makes by default.
STUDENT_SIZE = {"emb": 128, "hidden": 256, "layers": 1}


@dataclass
class DistillConfig:
    """Hinton et al.'s knobs: soft-label temperature, weight of the soft-label term, share of positions."""
    temperature: float = 2.0
    alpha: float = 0.5
    kd_fraction: float = 1.0

    def __post_init__(self) -> None:
        _check_all(self)
