"""models.dataset: raw text checked, normalised, split deterministically, counted, stored atomically."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import dataset
from models.data import load_corpus, verify_checksums
from models.errors import DataError
from models.tokenizer import Vocab


def test_decode_refuses_binary_non_utf8_and_empty_text():
    assert dataset.decode_text("\ufeffone\n\n two \r\nthree".encode()) == ["one", " two ", "three"]
    for raw, what in ((b"PK\x03\x04\x00\x00binary", "binary"), (b"\x01\x02\x03\x04" * 10, "binary"),
                      ("d\u00e9j\u00e0 vu".encode("latin-1"), "UTF-8"), (b"", "empty"), (b" \n\t\n", "empty")):
        with pytest.raises(DataError, match=what):
            dataset.decode_text(raw)


def test_normalise_uses_the_style_of_the_tokenizer():
    assert dataset.normalise_lines(["It's state-of-the-art, 3,000 units.", "   "], "wikitext") == [
        "It 's state @-@ of @-@ the @-@ art , 3 @,@ 000 units ."]
    assert dataset.normalise_lines(["It's 3,000 units."], "ptb") == ["it 's N units"]


def test_split_is_deterministic_in_file_order_and_honours_fractions():
    lines = [f"line {i}" for i in range(100)]
    a, b = dataset.split_lines(lines, 0.2, 0.1, seed=5), dataset.split_lines(lines, 0.2, 0.1, seed=5)
    assert a == b and {k: len(v) for k, v in a.items()} == {"train": 70, "valid": 20, "test": 10}
    assert sorted(sum(a.values(), [])) == sorted(lines)
    assert all(v == sorted(v, key=lambda s: int(s.split()[1])) for v in a.values())  # each split in file order
    assert dataset.split_lines(lines, 0.2, 0.1, seed=6) != a
    assert {k: len(v) for k, v in dataset.split_lines(lines[:3], 0.01, 0.01).items()} == {"train": 1, "valid": 1,
                                                                                          "test": 1}
    with pytest.raises(DataError, match="too few"):
        dataset.split_lines(lines[:2])
    with pytest.raises(DataError, match="fractions"):
        dataset.split_lines(lines, 0.6, 0.5)


def test_store_list_get_delete_and_train_on_it(tmp_path: Path):
    root = tmp_path / "datasets"
    raw = tmp_path / "mine.txt"
    raw.write_text("\n".join(f"The Zorbex model {i} ships today." for i in range(40)) + "\n", encoding="utf-8")
    vocab = Vocab(["<unk>", "<eos>", "The", "model", "ships", "today", "."])
    ds = dataset.from_files(root, "mine", {"text": raw}, "wikitext", vocabs={"base": vocab}, model="base")
    assert ds.info["lines"] == {"train": 32, "valid": 4, "test": 4} and ds.info["model"] == "base"
    assert ds.info["unknown"]["base"]["top"][0] == "Zorbex"
    # Zorbex and the number: 2 of 7 tokens per line
    assert ds.info["unknown"]["base"]["tokens"] == pytest.approx(2 / 7, abs=1e-3)
    verify_checksums(ds.path)
    corpus = load_corpus(ds.path)
    assert "Zorbex" in corpus.vocab and corpus.valid is not None and corpus.test is not None
    assert json.loads((ds.path / "dataset.json").read_text())["sha256"] == ds.info["sha256"]

    with pytest.raises(dataset.DatasetExists):
        dataset.from_files(root, "mine", {"text": raw}, "wikitext")
    for name in ("../up", "a/b", "..", ".hidden", "Upper"):
        with pytest.raises(DataError, match="invalid dataset name"):
            dataset.from_files(root, name, {"text": raw}, "wikitext")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00\x01binary" * 100)
    with pytest.raises(DataError, match="binary"):
        dataset.from_files(root, "bad", {"text": bad}, "wikitext")
    assert sorted(p.name for p in root.iterdir()) == ["mine"]  # nothing half-written left behind
    assert [d.name for d in dataset.list_all(root)] == ["mine"]
    dataset.delete(root, "mine")
    assert dataset.list_all(root) == [] and list(root.iterdir()) == []
    with pytest.raises(dataset.DatasetNotFound):
        dataset.get(root, "mine")
