"""Adapting a model: vocabulary extension keeps the old words' scores up to the renormalisation and
knows the new words; the adapt preset; `rnnlm train --init --preset adapt --extend-vocab` end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.adapt import ADAPT_PRESET, extend_vocab, new_words, with_preset
from models.checkpoint import LoadedModel, load_model
from models.config import SettingError, TrainConfig
from models.errors import DataError
from models.rnnlm import RNNLM, ModelConfig
from models.tokenizer import Tokenizer, Vocab

NEW = [("Zorbex", 40), ("Quillon", 20), ("Vantrel", 20)]
PRODUCT_LINES = [f"The {name} ships with a {part} and a warranty ." for name, part in
                 (("Zorbex", "charger"), ("Quillon", "stand"), ("Zorbex", "cable"), ("Vantrel", "case"))] * 10


def random_model(adaptive: bool, tie: bool = False, vocab_size: int = 60) -> LoadedModel:
    torch.manual_seed(0)
    words = ["<unk>", "<eos>", "the", "a", "of"] + [f"w{i}" for i in range(vocab_size - 5)]
    config = ModelConfig(vocab_size=vocab_size, emb=16, hidden=16, layers=1, dropout=0.0, adaptive=adaptive,
                         tie=tie, cutoffs=[10, 30])
    model = RNNLM(config)
    for p in model.parameters():  # non-trivial output rows and biases
        torch.nn.init.normal_(p, std=0.3)
    model.eval()
    return LoadedModel("base", model, Tokenizer(Vocab(words), "none"))


def log_probs(model: RNNLM, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        feats, _ = model.features(torch.tensor([ids]))
        return model.log_probs(feats)[0]


@pytest.mark.parametrize("adaptive, tie", [(True, False), (False, False), (False, True)])
def test_extension_keeps_old_scores_up_to_renormalisation_and_knows_the_new_words(adaptive, tie):
    base = random_model(adaptive, tie)
    old_size = len(base.tokenizer.vocab)
    model, tokenizer, ext = extend_vocab(base, NEW)
    assert ext.words == ["Zorbex", "Quillon", "Vantrel"] and ext.old_size == old_size
    assert tokenizer.vocab.itos[:old_size] == base.tokenizer.vocab.itos  # old ids unchanged
    encoded = tokenizer.encode("the Zorbex of w3")
    assert not any(encoded.oov) and encoded.ids[1] == old_size

    ids = base.tokenizer.encode("<eos> the w3 of a w40 w7 the").ids
    before, after = log_probs(base.model, ids), log_probs(model, ids)
    assert torch.allclose(after.exp().sum(-1), torch.ones(len(ids)), atol=1e-4)  # still a distribution
    shift = after[:, :old_size] - before  # per position: 0, or one constant (log of the renormalisation)
    if adaptive:  # the head and the first tail are untouched; the last tail shares its mass with the new words
        assert torch.allclose(shift[:, :30], torch.zeros(len(ids), 30), atol=1e-5)
        moved = shift[:, 30:]
    else:
        moved = shift
    assert torch.allclose(moved, moved[:, :1].expand_as(moved), atol=1e-5) and (moved < 0).all()
    assert torch.isfinite(after[:, old_size:]).all()
    # a new word is read like <unk> was: same input embedding
    assert torch.equal(model.encoder.weight[old_size], base.model.encoder.weight[base.tokenizer.vocab.unk])


def test_new_words_are_frequent_unknown_words_in_order():
    vocab = Vocab(["<unk>", "<eos>", "The", "with", "a"])
    found = new_words(PRODUCT_LINES + ["<unk> rare"], vocab, min_count=20)
    counts = [c for _, c in found]
    assert counts == sorted(counts, reverse=True) and found[0] == ("ships", 40)
    assert ("Zorbex", 20) in found and ("Quillon", 10) not in found and all(c >= 20 for _, c in found)
    assert all(w not in ("<unk>", "rare") for w, _ in found)
    assert len(new_words(PRODUCT_LINES, vocab, min_count=1, limit=2)) == 2
    with pytest.raises(DataError):
        extend_vocab(random_model(True), [("the", 5)])  # nothing new


def test_adapt_preset_fills_what_was_not_given():
    cfg = TrainConfig(data="d", out="o", init="m", preset="adapt", epochs=2)
    adapted = with_preset(cfg, explicit={"epochs"})
    assert adapted.epochs == 2 and adapted.lr == ADAPT_PRESET["lr"] and adapted.patience == ADAPT_PRESET["patience"]
    assert with_preset(TrainConfig(data="d", out="o")).lr == TrainConfig(data="d", out="o").lr
    with pytest.raises(SettingError, match="extend_vocab"):
        TrainConfig(data="d", out="o", extend_vocab=10)  # extending needs a model to extend
    with pytest.raises(SettingError, match="preset"):
        TrainConfig(data="d", out="o", preset="adapt")


@pytest.fixture(scope="module")
def product_corpus(tmp_path_factory, tiny_corpus: Path) -> Path:
    folder = tmp_path_factory.mktemp("products")
    for split, n in (("train", 300), ("valid", 60)):
        lines = (tiny_corpus / f"{split}.txt").read_text(encoding="utf-8").splitlines()[:n]
        (folder / f"{split}.txt").write_text("\n".join(lines + PRODUCT_LINES) + "\n", encoding="utf-8")
    return folder


def test_rnnlm_train_adapts_and_extends_from_the_command_line(tmp_path, tiny_model, product_corpus):
    out = tmp_path / "adapted"
    proc = subprocess.run([sys.executable, "-m", "models.cli", "train", "--data", str(product_corpus), "--out",
                           str(out), "--init", str(tiny_model), "--preset", "adapt", "--extend-vocab", "3",
                           "--min-count", "10", "--epochs", "1", "--batch-size", "8", "--bptt", "20",
                           "--run-dir", str(tmp_path / "run"), "--quiet", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    base, adapted = load_model(tiny_model), load_model(out)
    old = len(base.tokenizer.vocab)
    assert len(adapted.tokenizer.vocab) == old + 3
    assert adapted.tokenizer.vocab.itos[:old] == base.tokenizer.vocab.itos
    assert "Zorbex" in adapted.tokenizer.vocab.itos[old:] and "Zorbex" not in base.tokenizer.vocab
    meta = json.loads((out / "config.json").read_text())
    prov = meta["provenance"]
    assert prov["vocab_extension"]["added"] == 3 and prov["init"]["name"] == base.name
    assert prov["train_config"]["lr"] == ADAPT_PRESET["lr"] and prov["train_config"]["epochs"] == 1
    # the adapted model predicts the new word where the base model could only say <unk>
    text = "The Zorbex ships with a charger and a warranty ."
    assert not any(adapted.tokenizer.encode(text).oov) and any(base.tokenizer.encode(text).oov)

    bad = subprocess.run([sys.executable, "-m", "models.cli", "train", "--data", str(product_corpus), "--out",
                          str(tmp_path / "x"), "--extend-vocab", "3"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "extend_vocab" in bad.stderr and not (tmp_path / "x").exists()
