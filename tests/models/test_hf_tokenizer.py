"""The Hugging Face tokenizer written beside each model splits text exactly as the server does."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoint import load_model
from models.hf_tokenizer import TOKENIZER, TOKENIZER_CONFIG, build_tokenizer, tokenizer_config, write_tokenizer
from models.tokenizer import EOS, UNK, Vocab
from models.tokenizer import Tokenizer as ServerTokenizer

tokenizers = pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[2]
PAIRS = REPO / "eval" / "data" / "wikitext2_pairs.jsonl"
SHIPPED = [REPO / "checkpoints" / name for name in ("lstm", "gru", "student")]


def task_texts() -> list[str]:
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]
    return [text for row in rows for text in (row["good"], row["bad"])]


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_shipped_tokenizer_files_are_current(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_bytes((folder / "vocab.txt").read_bytes())
    write_tokenizer(tmp_path)
    assert (folder / TOKENIZER).read_bytes() == (tmp_path / TOKENIZER).read_bytes()
    assert json.loads((folder / TOKENIZER_CONFIG).read_text()) == tokenizer_config()


def test_task_texts_tokenise_like_the_server() -> None:
    loaded = load_model(SHIPPED[0], name="lstm")
    hf = tokenizers.Tokenizer.from_file(str(SHIPPED[0] / TOKENIZER))
    server = loaded.tokenizer
    texts = task_texts()
    assert len(texts) == 400
    for text in texts:
        encoded = hf.encode(text)
        assert encoded.ids == server.encode(text).ids, text
        assert encoded.tokens == server.encode(text).tokens


def test_wikitext_test_split_tokenises_like_the_server(wikitext2: Path) -> None:
    vocab = Vocab.load(SHIPPED[0] / "vocab.txt")
    hf, server = build_tokenizer(vocab), ServerTokenizer(vocab, "wikitext")
    lines = [line for line in (wikitext2 / "test.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    for line in lines[:1500]:
        assert hf.encode(line).ids == server.encode(line).ids, line


def test_special_tokens_and_unknown_words() -> None:
    vocab = Vocab(["the", "cat", UNK, EOS])
    hf = build_tokenizer(vocab)
    assert hf.encode("the dog <eos> cat").ids == [0, 2, 3, 1]
    assert hf.token_to_id(EOS) == vocab.eos and hf.token_to_id(UNK) == vocab.unk
    assert tokenizer_config()["bos_token"] == EOS  # lm-eval's prefix token: the sentence start


def test_transformers_loads_the_folder() -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(SHIPPED[0]))
    vocab = Vocab.load(SHIPPED[0] / "vocab.txt")
    text = task_texts()[0]
    assert tok(text, add_special_tokens=False).input_ids == [vocab.stoi[w] for w in text.split()]
    assert tok.bos_token_id == vocab.eos == tok.eos_token_id


def test_task_file_is_what_make_pairs_writes(wikitext2: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    done = subprocess.run([sys.executable, "eval/make_pairs.py", "--data", str(wikitext2), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == PAIRS.read_bytes()
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]
    assert all(sorted(r["good"].split()) == sorted(r["bad"].split()) and r["good"] != r["bad"] for r in rows)
