"""Fingerprints of the shipped models: a broken loader or tokenizer cannot go unnoticed.

Each model's perplexity on the first 200 lines of the WikiText-2 test set must match the figure
recorded in its config.json (by `rnnlm eval --lines 200 --record fingerprint`) to 0.1 %.
"""
import json
from pathlib import Path

import pytest

from models.checkpoint import load_model
from models.data import encode_lines, read_lines
from models.evaluate import evaluate_stream

REPO = Path(__file__).resolve().parents[2]

SHIPPED = ["lstm", "gru", "student"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_matches_its_fingerprint(name, wikitext2):
    folder = REPO / "checkpoints" / name
    if not (folder / "config.json").exists():
        pytest.skip(f"checkpoints/{name} is not shipped yet")
    meta = json.loads((folder / "config.json").read_text())
    fingerprint = meta["metrics"]["fingerprint"]
    assert fingerprint["data"] == "wikitext-2/test.txt" and fingerprint["lines"] == 200
    loaded = load_model(folder)
    lines = read_lines(wikitext2 / "test.txt")[:200]
    stream = encode_lines(lines, loaded.tokenizer.vocab, titles=loaded.config.context)
    score = evaluate_stream(loaded.model, stream, use_context=fingerprint.get("context") != "none")
    assert score.num_tokens == fingerprint["num_tokens"]
    assert score.perplexity == pytest.approx(fingerprint["perplexity"], rel=1e-3)


def test_shipped_models_fit_the_size_budget():
    total = sum(p.stat().st_size for name in SHIPPED for p in (REPO / "checkpoints" / name).glob("*")
                if (REPO / "checkpoints" / name).exists())
    assert total <= 48 * 2**20
