"""Model folders: `model.safetensors` + `config.json` + `vocab.txt`, written atomically.

Loading reads JSON, text and safetensors only: nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.errors import CheckpointError
from models.rnnlm import RNNLM, ModelConfig
from models.tokenizer import Tokenizer, Vocab

FORMAT = "rnnlm-serve/1"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
WEIGHTS, CONFIG, VOCAB = "model.safetensors", "config.json", "vocab.txt"


@dataclass
class LoadedModel:
    """A model ready for inference, with everything its folder says about it."""
    name: str
    model: RNNLM
    tokenizer: Tokenizer
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name))


def _tensors(model: RNNLM, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # A tied decoder shares the encoder's storage: store it once.
    state = model.state_dict()
    if model.config.tie:
        state.pop("decoder.weight", None)
    # on the CPU whatever device the model is on: a folder written on a GPU loads anywhere
    return {k: v.detach().to(device="cpu", dtype=dtype if v.is_floating_point() else v.dtype).contiguous()
            for k, v in state.items()}


def write_folder_atomically(out: str | Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling of `out` with `fill(tmp)`, then swap it into place.

    A reader sees either the previous complete folder or the new complete one; temporaries are
    named `.NAME.tmp-*` / `.NAME.old-*` so a watcher can tell a swap in progress.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_model(model: RNNLM, tokenizer: Tokenizer, out: str | Path, meta: dict | None = None,
               dtype: torch.dtype = torch.float32) -> Path:
    """Write a model folder atomically (see `write_folder_atomically`)."""
    def fill(tmp: Path) -> None:
        save_file(_tensors(model, dtype), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        tokenizer.vocab.save(tmp / VOCAB)
        config = {
            "format": FORMAT,
            "name": Path(out).name,
            "model": model.config.to_dict(),
            "dtype": str(dtype).removeprefix("torch."),
            "parameters": model.num_parameters(),
            "tokenizer": {"style": tokenizer.style, "vocab_file": VOCAB, "vocab_size": len(tokenizer.vocab)},
            **(meta or {}),
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return write_folder_atomically(out, fill)


def copy_model(src: str | Path, dst: str | Path) -> Path:
    """Publish a copy of a model folder atomically (e.g. a finished job's model into the served dir)."""
    return write_folder_atomically(dst, lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no such model folder: {folder}")
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{path} is not an rnnlm-serve model config")
    return config


def load_model(folder: str | Path, name: str | None = None) -> LoadedModel:
    """Load a model folder for fp32 inference (eval mode); raises CheckpointError if it is broken."""
    folder = Path(folder)
    meta = read_config(folder)
    try:
        config = ModelConfig.from_dict(meta["model"])
        tok_meta = meta.get("tokenizer", {})
        vocab = Vocab.load(folder / tok_meta.get("vocab_file", VOCAB))
        tokenizer = Tokenizer(vocab, tok_meta.get("style", "wikitext"))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder}: bad config or vocabulary: {exc}") from None
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{folder}: vocab.txt has {len(vocab)} words, config says {config.vocab_size}")
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{folder}: cannot read {WEIGHTS}: {exc}") from None
    model = RNNLM(config)
    expected = _tensors(model, torch.float32)
    missing = expected.keys() - tensors.keys()
    extra = tensors.keys() - expected.keys()
    if missing or extra:
        raise CheckpointError(f"{folder}: weights do not match the config (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(extra)[:3]})")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{folder}: {key} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    if config.tie:
        model.decoder.weight = model.encoder.weight
    model.eval()
    return LoadedModel(name or meta.get("name") or folder.name, model, tokenizer, meta, folder)


def record_metrics(folder: str | Path, updates: dict) -> dict:
    """Merge `updates` into config.json's "metrics" (atomic rewrite of that one file)."""
    folder = Path(folder)
    config = read_config(folder)
    config.setdefault("metrics", {}).update(updates)
    tmp = folder / f".{CONFIG}.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / CONFIG)
    return config
