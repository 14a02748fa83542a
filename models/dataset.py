"""A user's raw text as a corpus folder a job can train on: checked, normalised, split, counted, stored.

Raw text is UTF-8, one sentence or paragraph per line (blank lines are dropped). Each line is
normalised by the tokenizer of the model it is meant for (`models.normalize`, e.g. WikiText's
`state @-@ of @-@ the @-@ art`), so training and serving see the same tokens. One file is split by
line into train/valid/test (a seeded shuffle of the line numbers, each split in the file's order);
three files are kept as they are. A dataset is a folder `<root>/<name>/` with train.txt, valid.txt,
test.txt, SHA256SUMS and dataset.json (the upload's sha256 and the counts), written under a temporary
name and renamed into place, so a reader sees all of it or nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from models.checkpoint import valid_name
from models.data import SPLITS, sha256
from models.errors import DataError
from models.normalize import normalize
from models.tokenizer import UNK, Vocab

INFO = "dataset.json"
SPLIT_FILES = {split: f"{split}.txt" for split in SPLITS}
# Control characters other than tab, newline, carriage return and form feed mark a binary file.
_CONTROL = bytes(c for c in range(32) if c not in (9, 10, 12, 13)) + b"\x7f"


class DatasetExists(DataError):
    """A dataset of that name is already stored."""


class DatasetNotFound(DataError):
    """No dataset of that name is stored."""


def check_name(name: str) -> str:
    """`name` if it can be a dataset folder (lower case, digits, `.`, `_`, `-`; no path)."""
    if not valid_name(name) or name in (".", ".."):
        raise DataError(f"invalid dataset name {name!r}: use 1-64 of a-z 0-9 . _ - starting with a letter or digit")
    return name


def decode_text(raw: bytes, what: str = "the upload") -> list[str]:
    """The non-blank lines of UTF-8 text (a BOM is dropped); DataError for binary, non-UTF-8 or empty."""
    sample = raw[:65536]
    if b"\x00" in sample or (sample and sum(sample.count(bytes([c])) for c in _CONTROL) > len(sample) // 100):
        raise DataError(f"{what} looks binary; expected UTF-8 text, one sentence or paragraph per line")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "convert it, e.g. with iconv -t UTF-8") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{what} is empty")
    return lines


def normalise_lines(lines: Iterable[str], style: str) -> list[str]:
    """Each line in the tokenisation of a tokenizer `style`, tokens joined by single spaces."""
    out = []
    for line in lines:
        tokens = normalize(line, style)
        if tokens:
            out.append(" ".join(tokens))
    return out


def split_lines(lines: list[str], valid: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, list[str]]:
    """train/valid/test by line: a seeded shuffle picks each split's lines, kept in file order."""
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise DataError("valid and test fractions must be in [0, 1) and leave some lines for train")
    n = len(lines)
    n_valid = max(1, round(n * valid)) if valid > 0 else 0
    n_test = max(1, round(n * test)) if test > 0 else 0
    if n - n_valid - n_test < 1:
        raise DataError(f"{n} lines are too few to split into train/valid/test; upload at least 3 lines")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    chosen = {"valid": sorted(order[:n_valid]), "test": sorted(order[n_valid:n_valid + n_test]),
              "train": sorted(order[n_valid + n_test:])}
    return {split: [lines[i] for i in chosen[split]] for split in SPLITS}


def counts(splits: Mapping[str, list[str]], vocabs: Mapping[str, Vocab] | None = None) -> dict:
    """Lines and tokens per split, the train split's vocabulary size, and for each model the share
    of all tokens (and of distinct words) its vocabulary lacks."""
    words: Counter[str] = Counter()
    out: dict = {"lines": {}, "tokens": {}}
    for split, lines in splits.items():
        toks = [t for line in lines for t in line.split()]
        out["lines"][split], out["tokens"][split] = len(lines), len(toks)
        words.update(toks)
    train_types = {t for line in splits.get("train", []) for t in line.split()}
    out["vocab_size"] = len(train_types)
    total = sum(words.values())
    out["unknown"] = {}
    for name, vocab in (vocabs or {}).items():
        missing = Counter({w: c for w, c in words.items() if w not in vocab.stoi or w == UNK})
        out["unknown"][name] = {"tokens": round(sum(missing.values()) / max(total, 1), 4),
                                "words": round(len(missing) / max(len(words), 1), 4),
                                "top": [w for w, _ in missing.most_common(11) if w != UNK][:10]}
    return out


@dataclass
class Dataset:
    name: str
    path: Path
    info: dict


def create(root: str | Path, name: str, splits: Mapping[str, list[str]], info: dict | None = None) -> Dataset:
    """Store normalised `splits` as `<root>/<name>/` atomically; DatasetExists if the name is taken."""
    root = Path(root)
    check_name(name)
    if not splits.get("train"):
        raise DataError("the dataset has no training lines")
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if final.exists():
        raise DatasetExists(f"dataset {name!r} already exists; delete it first or choose another name")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        sums = []
        for split in SPLITS:
            lines = splits.get(split) or []
            if not lines:
                continue
            path = tmp / SPLIT_FILES[split]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            sums.append(f"{sha256(path)}  {path.name}")
        (tmp / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        full = {"name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(info or {})}
        (tmp / INFO).write_text(json.dumps(full, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        if final.exists():
            raise DatasetExists(f"dataset {name!r} already exists; delete it first or choose another name")
        os.replace(tmp, final)  # an empty target directory would be replaced: checked just above
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Dataset(name, final, full)


def get(root: str | Path, name: str) -> Dataset:
    path = Path(root) / check_name(name)
    try:
        info = json.loads((path / INFO).read_text())
    except (OSError, ValueError):
        raise DatasetNotFound(f"no dataset named {name!r}") from None
    return Dataset(name, path, info)


def list_all(root: str | Path) -> list[Dataset]:
    """Every stored dataset, by name (folders being written or removed are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not valid_name(path.name):
            continue
        try:
            out.append(get(root, path.name))
        except DatasetNotFound:
            continue
    return out


def delete(root: str | Path, name: str) -> None:
    """Remove a dataset: renamed out of sight first, so it disappears at once, then deleted."""
    dataset = get(root, name)
    gone = Path(tempfile.mkdtemp(prefix=f".{name}.deleted.", dir=Path(root)))
    os.replace(dataset.path, gone / name)
    shutil.rmtree(gone, ignore_errors=True)


def from_files(root: str | Path, name: str, files: Mapping[str, str | Path], style: str,
               valid: float = 0.1, test: float = 0.1, seed: int = 0,
               vocabs: Mapping[str, Vocab] | None = None, source: str | None = None,
               model: str | None = None) -> Dataset:
    """A dataset from raw text files: {"text": path} is split by line; {"train", "valid", "test"} are kept.
    `model` names whose tokenizer `style` is; `vocabs` are the models whose unknown words are counted."""
    raw = {key: Path(path).read_bytes() for key, path in files.items()}
    digest = hashlib.sha256()
    for key in sorted(raw):
        digest.update(raw[key])
    lines = {key: normalise_lines(decode_text(data, "the text" if key == "text" else f"the {key} file"), style)
             for key, data in raw.items()}
    if set(lines) == {"text"}:
        splits = split_lines(lines["text"], valid, test, seed)
        how = {"split": {"valid": valid, "test": test, "seed": seed}}
    elif "train" in lines and set(lines) <= set(SPLITS):
        splits, how = {s: lines.get(s, []) for s in SPLITS}, {"split": "as uploaded"}
    else:
        raise DataError("give one text file, or train (and valid, test) files")
    info = {"sha256": digest.hexdigest(), "style": style, "model": model, "source": source, **how,
            **counts(splits, vocabs)}
    return create(root, name, splits, info)
