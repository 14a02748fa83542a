"""Model versions: each name keeps every model published under it; a pointer says which one is served.

Layout of a model folder `<checkpoints>/<name>/`:

    config.json, model.safetensors, vocab.txt   version 1: the folder's own files (as shipped)
    versions/<n>/                               version n >= 2: a model folder + version.json
    current                                     the pointer: {"version": n, "previous": [...], ...}

A folder without `current` serves version 1, so a plain model folder is a model with one version.
A new version is copied into a temporary folder and renamed into place (never seen half-written);
the pointer is written to a temporary file and `os.replace`d (readers see the old or the new one).
Publishing, promoting and rolling back take an exclusive `flock` on `versions/.lock`, so the
promotion gate always compares against the version that is current at that moment, even with a
worker and several API processes writing at once. Readers (the registry's watcher) take no lock.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from models.checkpoint import CONFIG, VOCAB, read_config
from models.data import sha256
from models.errors import CheckpointError, RNNLMError

VERSIONS, POINTER, RECORD, LOCK = "versions", "current", "version.json", ".lock"


class VersionError(RNNLMError):
    """A promotion or rollback that cannot be done as asked (e.g. nothing to roll back to)."""

    param: str | None = None


class VersionNotFound(VersionError):
    """The model has no version of this number."""

    param = "version"


class PromotionRefused(VersionError):
    """The promotion gate said no (and no force was given)."""

    def __init__(self, name: str, version: int, reason: str) -> None:
        super().__init__(f"version {version} of {name!r} was not promoted: {reason}; promote it with force to "
                         "serve it anyway")
        self.reason = reason


@dataclass
class Version:
    """One version of a model, as its folder and record describe it."""
    number: int
    path: Path
    created: float                      # Unix seconds: when it was published (version 1: its config's mtime)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)  # version.json: source job, the gate's decision at publication

    @property
    def valid_ppl(self) -> float | None:
        return _finite(self.metrics.get("valid_ppl"))

    @property
    def test_ppl(self) -> float | None:
        return _finite(self.metrics.get("test_ppl"))


@dataclass
class Decision:
    """What the promotion gate said about a candidate version."""
    promote: bool
    reason: str


@dataclass
class Published:
    """The outcome of publishing a model under a name."""
    version: int
    promoted: bool
    reason: str


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# ---- reading ------------------------------------------------------------------------------------
def version_folder(model_dir: str | Path, number: int) -> Path:
    model_dir = Path(model_dir)
    return model_dir if number == 1 else model_dir / VERSIONS / str(number)


def version_of(folder: str | Path) -> int:
    """The version number of a version's folder (the name's own folder is version 1)."""
    folder = Path(folder)
    return int(folder.name) if folder.parent.name == VERSIONS and folder.name.isdigit() else 1


def read_pointer(model_dir: str | Path) -> dict:
    """The pointer's content; {"version": 1, "previous": []} when the folder has none."""
    path = Path(model_dir) / POINTER
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"version": 1, "previous": []}
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    try:
        pointer = json.loads(text)
        if not isinstance(pointer.get("version"), int) or pointer["version"] < 1:
            raise ValueError("no version number")
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a version pointer: {exc}") from None
    pointer.setdefault("previous", [])
    return pointer


def current_version(model_dir: str | Path) -> int:
    return read_pointer(model_dir)["version"]


def current_folder(model_dir: str | Path) -> Path:
    """The folder of the version being served; raises CheckpointError if the pointer names a missing one."""
    number = current_version(model_dir)
    folder = version_folder(model_dir, number)
    if not (folder / CONFIG).is_file():
        raise CheckpointError(f"{Path(model_dir) / POINTER} names version {number}, which does not exist")
    return folder


def read_version(model_dir: str | Path, number: int) -> Version:
    folder = version_folder(model_dir, number)
    if not (folder / CONFIG).is_file():
        raise VersionNotFound(f"model {Path(model_dir).name!r} has no version {number}")
    config = read_config(folder)
    try:
        record = json.loads((folder / RECORD).read_text())
        record = record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        record = {}  # version 1 as shipped has none
    created = record.get("created")
    if not isinstance(created, (int, float)):
        created = (folder / CONFIG).stat().st_mtime
    return Version(number, folder, float(created), config.get("metrics") or {}, config.get("provenance") or {},
                   record)


def _numbers(model_dir: Path) -> list[int]:
    found = [1] if (model_dir / CONFIG).is_file() else []
    versions = model_dir / VERSIONS
    if versions.is_dir():
        found += sorted(int(p.name) for p in versions.iterdir()
                        if p.name.isdigit() and int(p.name) > 1 and (p / CONFIG).is_file())
    return found


def list_versions(model_dir: str | Path) -> list[Version]:
    """Every version of a model, oldest first."""
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG).is_file():
        raise VersionNotFound(f"no model folder {model_dir}")
    return [read_version(model_dir, n) for n in _numbers(model_dir)]


# ---- the promotion gate ---------------------------------------------------------------------------
def _valid_tokens(version: Version) -> object:
    return (version.provenance.get("train_config") or {}).get("valid_tokens")


def _valid_digest(version: Version) -> str | None:
    """The validation file's sha256, where the model's config or its version record has it."""
    return version.provenance.get("valid_sha256") or (version.record.get("source") or {}).get("valid_sha256")


def _vocab_digest(version: Version) -> str:
    return sha256(version.path / VOCAB)


def comparable(current: Version, candidate: Version) -> str | None:
    """None when both validation perplexities were measured on the same data with the same vocabulary;
    otherwise why they cannot be compared."""
    a, b = current.provenance, candidate.provenance
    if not a.get("corpus_sha256") or a.get("corpus_sha256") != b.get("corpus_sha256"):
        return (f"it was trained on other data (corpus {b.get('corpus')!r}, sha256 "
                f"{str(b.get('corpus_sha256'))[:12]}) than version {current.number} "
                f"(corpus {a.get('corpus')!r}, sha256 {str(a.get('corpus_sha256'))[:12]})")
    if _valid_digest(current) and _valid_digest(candidate) and _valid_digest(current) != _valid_digest(candidate):
        return f"its validation file differs from version {current.number}'s"
    if _valid_tokens(current) != _valid_tokens(candidate):
        return (f"its validation perplexity covers other tokens (valid_tokens {_valid_tokens(candidate)}, "
                f"version {current.number}: {_valid_tokens(current)})")
    if _vocab_digest(current) != _vocab_digest(candidate):
        return f"its vocabulary differs from version {current.number}'s, so their perplexities are not comparable"
    return None


def gate(current: Version, candidate: Version) -> Decision:
    """Promote only a version whose validation perplexity is no worse than the current one's, on the same data."""
    if candidate.valid_ppl is None:
        return Decision(False, "it has no validation perplexity")
    if current.valid_ppl is None:
        return Decision(False, f"version {current.number} has no validation perplexity to compare with")
    why_not = comparable(current, candidate)
    if why_not:
        return Decision(False, why_not)
    if candidate.valid_ppl > current.valid_ppl:
        return Decision(False, f"validation perplexity {candidate.valid_ppl:.2f} is worse than version "
                               f"{current.number}'s {current.valid_ppl:.2f}")
    return Decision(True, f"validation perplexity {candidate.valid_ppl:.2f} is no worse than version "
                          f"{current.number}'s {current.valid_ppl:.2f}")


# ---- writing ------------------------------------------------------------------------------------
@contextmanager
def locked(model_dir: str | Path) -> Iterator[None]:
    """Exclusive across processes (flock): one publish, promote or rollback of a name at a time."""
    if not (Path(model_dir) / CONFIG).is_file():
        raise VersionNotFound(f"no model folder {model_dir}")
    versions = Path(model_dir) / VERSIONS
    versions.mkdir(exist_ok=True)
    with open(versions / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_pointer(model_dir: Path, number: int, previous: list[int], how: str) -> None:
    body = {"version": number, "previous": previous, "changed_at": round(time.time(), 3), "how": how}
    fd, tmp = tempfile.mkstemp(prefix=f".{POINTER}.tmp-", dir=model_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(body) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, model_dir / POINTER)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _move_pointer(model_dir: Path, number: int, how: str) -> None:
    pointer = read_pointer(model_dir)
    previous = [int(v) for v in pointer["previous"] if isinstance(v, int)]
    if pointer["version"] != number:
        previous.append(pointer["version"])
    _write_pointer(model_dir, number, previous[-100:], how)


def publish(model_dir: str | Path, src: str | Path, source: dict | None = None) -> Published:
    """Publish the model folder `src` under `model_dir`'s name: its first version if the name is new,
    else a new version that is served only if it passes the gate against the current one."""
    model_dir, src = Path(model_dir), Path(src)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    if not model_dir.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.tmp-", dir=model_dir.parent))
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            reason = "the first version of this name"
            record = {"version": 1, "created": round(time.time(), 3), "source": source or {},
                      "gate": {"promoted": True, "reason": reason, "against": None}}
            (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
            for path in tmp.iterdir():
                os.chmod(path, 0o644)
            os.chmod(tmp, 0o755)
            os.rename(tmp, model_dir)  # fails if another publisher got there first: then a new version below
            return Published(1, True, reason)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (model_dir / CONFIG).is_file():
                raise
    with locked(model_dir):
        numbers = _numbers(model_dir)
        if not numbers:
            raise CheckpointError(f"{model_dir} exists but holds no model")
        versions = model_dir / VERSIONS
        taken = [int(p.name) for p in versions.iterdir() if p.name.isdigit()]  # a broken one keeps its number
        number = max(numbers + taken) + 1
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=versions))
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            current = read_version(model_dir, current_version(model_dir))
            config = read_config(tmp)
            candidate = Version(number, tmp, time.time(), config.get("metrics") or {},
                                config.get("provenance") or {}, {"source": source or {}})
            decision = gate(current, candidate)
            record = {"version": number, "created": round(candidate.created, 3), "source": source or {},
                      "gate": {"promoted": decision.promote, "reason": decision.reason, "against": current.number}}
            (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
            for path in tmp.iterdir():
                os.chmod(path, 0o644)
            os.chmod(tmp, 0o755)
            os.rename(tmp, versions / str(number))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if decision.promote:
            _move_pointer(model_dir, number, "gate")
    return Published(number, decision.promote, decision.reason)


def promote(model_dir: str | Path, number: int, force: bool = False) -> Decision:
    """Serve version `number`: if it passes the gate against the current version, or with `force`.
    Raises PromotionRefused when the gate says no."""
    model_dir = Path(model_dir)
    with locked(model_dir):
        candidate = read_version(model_dir, number)
        current = read_version(model_dir, current_version(model_dir))
        if current.number == number:
            return Decision(True, f"version {number} is already current")
        decision = gate(current, candidate)
        if not decision.promote and not force:
            raise PromotionRefused(model_dir.name, number, decision.reason)
        _move_pointer(model_dir, number, "gate" if decision.promote else "force")
    return decision if decision.promote else Decision(True, f"forced ({decision.reason})")


def rollback(model_dir: str | Path, number: int | None = None) -> int:
    """Serve the version that was current before this one (or version `number`), without the gate;
    returns the version now current."""
    model_dir = Path(model_dir)
    with locked(model_dir):
        pointer = read_pointer(model_dir)
        previous = [int(v) for v in pointer["previous"] if isinstance(v, int)]
        if number is None:
            while previous and not (version_folder(model_dir, previous[-1]) / CONFIG).is_file():
                previous.pop()
            if not previous:
                raise VersionError(f"model {model_dir.name!r}: no earlier version to roll back to "
                                   f"(version {pointer['version']} is the first one served)")
            number = previous.pop()
            _write_pointer(model_dir, number, previous, "rollback")
        else:
            read_version(model_dir, number)  # it exists
            if number != pointer["version"]:
                _move_pointer(model_dir, number, "rollback")
    return number
