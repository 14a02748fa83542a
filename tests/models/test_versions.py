"""Model versions as a library and a command: layout, the promotion gate, promote, rollback, concurrency."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from models import versions
from models.checkpoint import load_model
from models.errors import CheckpointError

REPO = Path(__file__).resolve().parents[2]


def with_valid_ppl(src: Path, out: Path, valid_ppl: float | None, **provenance) -> Path:
    """A copy of a model folder whose config claims another validation perplexity (and provenance)."""
    shutil.copytree(src, out)
    config = json.loads((out / "config.json").read_text())
    config["metrics"]["valid_ppl"] = valid_ppl
    config["provenance"].update(provenance)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture
def model_dir(tmp_path: Path, tiny_model: Path) -> Path:
    return with_valid_ppl(tiny_model, tmp_path / "ckpt" / "tiny", 100.0)


@pytest.fixture
def candidate(tmp_path: Path, tiny_model: Path):
    count = iter(range(1000))

    def make(valid_ppl: float | None, **provenance) -> Path:
        return with_valid_ppl(tiny_model, tmp_path / f"cand-{next(count)}", valid_ppl, **provenance)
    return make


@pytest.mark.parametrize("name", ["lstm", "gru", "student"])
def test_shipped_models_are_one_version_each_and_load_unchanged(name):
    folder = REPO / "checkpoints" / name
    assert versions.current_folder(folder) == folder
    [only] = versions.list_versions(folder)
    assert (only.number, only.path, only.record) == (1, folder, {})
    assert only.valid_ppl == json.loads((folder / "config.json").read_text())["metrics"]["valid_ppl"]
    assert load_model(versions.current_folder(folder)).name == name


def test_worse_version_is_kept_but_not_served(model_dir, candidate):
    published = versions.publish(model_dir, candidate(150.0), {"job": "j1", "type": "train"})
    assert (published.version, published.promoted) == (2, False)
    assert "150.00 is worse than version 1's 100.00" in published.reason
    assert versions.current_folder(model_dir) == model_dir
    worse = versions.list_versions(model_dir)[-1]
    assert worse.path == model_dir / "versions" / "2" and worse.valid_ppl == 150.0
    assert worse.record["source"] == {"job": "j1", "type": "train"}
    assert worse.record["gate"] == {"promoted": False, "reason": published.reason, "against": 1}
    assert load_model(worse.path).config.vocab_size > 0  # a complete model folder


def test_better_or_equal_version_is_promoted(model_dir, candidate):
    assert versions.publish(model_dir, candidate(100.0)).promoted  # no worse: promoted
    assert versions.current_folder(model_dir) == model_dir / "versions" / "2"
    better = versions.publish(model_dir, candidate(80.0))
    assert (better.version, better.promoted) == (3, True)
    assert "no worse than version 2's" in better.reason
    assert versions.read_pointer(model_dir)["previous"] == [1, 2]


@pytest.mark.parametrize("change, why", [
    ({"corpus_sha256": "0" * 64, "corpus": "other"}, "trained on other data"),
    ({"valid_sha256": "f" * 64}, "validation file differs"),
    ({"train_config": {"valid_tokens": 500}}, "covers other tokens"),
])
def test_perplexities_on_other_data_are_not_compared(model_dir, candidate, change, why):
    if "valid_sha256" in change:  # only compared when both sides know it
        config = json.loads((model_dir / "config.json").read_text())
        config["provenance"]["valid_sha256"] = "e" * 64
        (model_dir / "config.json").write_text(json.dumps(config))
    published = versions.publish(model_dir, candidate(1.5, **change))
    assert not published.promoted and why in published.reason
    assert versions.current_version(model_dir) == 1


def test_another_vocabulary_is_not_compared(model_dir, candidate):
    other = candidate(1.5)
    vocab = (other / "vocab.txt").read_text().splitlines()
    (other / "vocab.txt").write_text("\n".join(vocab[:-1] + ["zzzz-other-word"]) + "\n")
    published = versions.publish(model_dir, other)
    assert not published.promoted and "vocabulary differs" in published.reason


def test_a_version_without_validation_perplexity_is_not_promoted(model_dir, candidate):
    published = versions.publish(model_dir, candidate(None))
    assert not published.promoted and "no validation perplexity" in published.reason


def test_promote_needs_the_gate_or_force_and_rollback_walks_back(model_dir, candidate):
    versions.publish(model_dir, candidate(150.0))   # 2: refused
    versions.publish(model_dir, candidate(90.0))    # 3: promoted
    with pytest.raises(versions.PromotionRefused, match="150.00 is worse than version 3's 90.00"):
        versions.promote(model_dir, 2)
    assert versions.current_version(model_dir) == 3
    decision = versions.promote(model_dir, 2, force=True)
    assert decision.promote and decision.reason.startswith("forced")
    assert versions.read_pointer(model_dir)["how"] == "force"
    assert versions.rollback(model_dir) == 3       # the one served before
    assert versions.rollback(model_dir) == 1
    with pytest.raises(versions.VersionError, match="no earlier version"):
        versions.rollback(model_dir)
    assert versions.rollback(model_dir, 3) == 3     # to a named version, without the gate
    with pytest.raises(versions.VersionNotFound):
        versions.promote(model_dir, 7)
    with pytest.raises(versions.VersionNotFound):
        versions.rollback(model_dir, 7)
    assert versions.current_version(model_dir) == 3


def test_first_publication_of_a_name_is_its_version_one(tmp_path, candidate):
    published = versions.publish(tmp_path / "ckpt" / "fresh", candidate(300.0), {"job": "j9"})
    assert (published.version, published.promoted) == (1, True)
    [first] = versions.list_versions(tmp_path / "ckpt" / "fresh")
    assert first.record["source"] == {"job": "j9"} and first.valid_ppl == 300.0
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_broken_pointer_is_a_checkpoint_error(model_dir):
    (model_dir / "current").write_text("not json")
    with pytest.raises(CheckpointError, match="not a version pointer"):
        versions.current_folder(model_dir)
    (model_dir / "current").write_text('{"version": 5, "previous": []}')
    with pytest.raises(CheckpointError, match="names version 5"):
        versions.current_folder(model_dir)


def test_concurrent_publishers_get_distinct_versions_and_the_gate_sees_each_other(model_dir, candidate):
    """Workers (here threads, each with its own lock file handle as processes would have) publish at once:
    every version is complete, numbered once, and the best one ends up served."""
    sources = [candidate(ppl) for ppl in (95.0, 60.0, 99.0, 70.0, 200.0, 65.0)]
    results, start = [], threading.Barrier(len(sources))

    def publish(src: Path) -> None:
        start.wait()
        results.append(versions.publish(model_dir, src))

    threads = [threading.Thread(target=publish, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(r.version for r in results) == [2, 3, 4, 5, 6, 7]
    served = versions.read_version(model_dir, versions.current_version(model_dir))
    assert served.valid_ppl == 60.0  # the gate never let a worse one replace a better one
    assert all(load_model(v.path) for v in versions.list_versions(model_dir))
    assert not [p for p in (model_dir / "versions").iterdir() if p.name.startswith(".tmp")]


def test_cli_lists_promotes_and_rolls_back(model_dir, candidate):
    versions.publish(model_dir, candidate(150.0), {"job": "abcdef123456", "type": "train"})
    root = str(model_dir.parent)

    def rnnlm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "models.cli", "models", *args, "--checkpoints", root],
                              capture_output=True, text=True, timeout=120, cwd=REPO)

    listed = rnnlm("list", "tiny")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "tiny:" and "gate" in lines[1]
    assert lines[2].split()[:2] == ["1", "*"]
    assert "train abcdef12" in lines[3] and "not promoted: validation perplexity 150.00 is worse" in lines[3]
    rows = [json.loads(line) for line in rnnlm("list", "--json").stdout.splitlines()]
    assert [(r["model"], r["version"], r["current"], r["promoted"]) for r in rows] == [
        ("tiny", 1, True, True), ("tiny", 2, False, False)]

    refused = rnnlm("promote", "tiny", "2")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("rnnlm models: error: version 2 of 'tiny' was not promoted")
    forced = rnnlm("promote", "tiny", "2", "--force")
    assert forced.returncode == 0 and "version 2 is current (forced" in forced.stdout
    assert versions.current_version(model_dir) == 2
    back = rnnlm("rollback", "tiny")
    assert back.returncode == 0 and back.stdout.strip() == "tiny: rolled back to version 1"
    missing = rnnlm("rollback", "nope")
    assert missing.returncode == 1 and "error" in missing.stderr
