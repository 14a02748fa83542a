"""Open-vocabulary scoring: the estimate of unseen words, the OOV penalty, and what a user sees."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoint import load_model, read_config
from models.engine import Engine
from models.errors import InputError
from models.oov import estimate_unseen, penalty_of
from models.tokenizer import Vocab

ROOT = Path(__file__).resolve().parents[2]


def lines_with(spectrum: dict[int, int], unk: int) -> list[str]:
    """A training text whose kept words occur as `spectrum` says (count -> types) plus `unk` <unk>s."""
    words = []
    for count, types in spectrum.items():
        for t in range(types):
            words += [f"w{count}_{t}"] * count
    return [" ".join(words), " ".join(["<unk>"] * unk)]


def test_unseen_types_extrapolate_the_rarest_counts() -> None:
    # kept words occur 3 and 4 times: f(3) = 800, f(4) = 400, a power law of exponent log 2 / log(4/3)
    lines = lines_with({3: 800, 4: 400}, unk=3000)
    est = estimate_unseen(lines, Vocab.build(lines))
    a = math.log(2) / math.log(4 / 3)
    f1, f2 = 800 * 3 ** a, 800 * 1.5 ** a
    assert est.method == "zipf-extrapolation" and est.min_count == 3 and est.unk_tokens == 3000
    assert est.unseen_types == pytest.approx(3000 * (f1 + f2) / (f1 + 2 * f2), rel=1e-9)
    assert est.penalty == pytest.approx(math.log(est.unseen_types))


def test_unseen_types_without_a_count_cutoff() -> None:
    no_unk = lines_with({1: 50, 2: 20, 3: 5}, unk=0)
    est = estimate_unseen(no_unk, Vocab.build(no_unk))
    assert est.method == "chao1" and est.unseen_types == pytest.approx(50 * 50 / (2 * 20))
    by_size = lines_with({1: 50, 2: 20}, unk=70)
    est = estimate_unseen(by_size, Vocab.build(by_size))
    assert est.method == "singletons" and est.unseen_types == 70


def test_shipped_models_record_their_estimate() -> None:
    for name in ("lstm", "gru", "student"):
        meta = read_config(ROOT / "checkpoints" / name)
        assert meta["oov"]["method"] == "zipf-extrapolation"
        assert penalty_of(meta) == pytest.approx(meta["oov"]["penalty"], abs=1e-4)


@pytest.fixture(scope="module")
def lstm() -> Engine:
    return Engine(load_model(ROOT / "checkpoints" / "lstm"))


def test_an_invented_word_scores_lower_than_a_known_one(lstm: Engine) -> None:
    known, invented = "He was born in Liverpool .", "He was born in Zorblaxville ."
    open_vocab = lstm.score([known, invented], oov_convention="open-vocab")
    assert [s.oov_convention for s in open_vocab] == ["open-vocab", "open-vocab"]
    assert open_vocab[1].oov_count == 1 and open_vocab[1].logprob < open_vocab[0].logprob
    unk_word = lstm.score([known, invented])  # the library's default: <unk> as a word
    assert unk_word[1].oov_convention == "unk-word"
    assert unk_word[1].logprob > unk_word[0].logprob  # what the old convention gets wrong
    penalty = lstm.oov_penalty
    assert open_vocab[1].logprob == pytest.approx(unk_word[1].logprob - penalty, abs=1e-6)
    oov_token = next(t for t in open_vocab[1].tokens if t.oov)
    assert oov_token.logprob == pytest.approx(next(t for t in unk_word[1].tokens if t.oov).logprob - penalty)
    assert open_vocab[0].logprob == pytest.approx(unk_word[0].logprob)  # no OOV: nothing changes
    assert open_vocab[1].perplexity == pytest.approx(math.exp(-open_vocab[1].logprob / 7))


def test_rank_prefers_the_sentence_without_an_invented_word(lstm: Engine) -> None:
    ranked = lstm.rank(["The album was released by Qwxzylophonics .", "The album was released by Columbia ."])
    assert ranked[0].text.endswith("Columbia .") and ranked[0].oov_convention == "open-vocab"
    old = lstm.rank(["The album was released by Qwxzylophonics .", "The album was released by Columbia ."],
                    oov_convention="unk-word")
    assert old[0].oov_convention == "unk-word"


def test_corpus_perplexity_keeps_the_published_convention(lstm: Engine) -> None:
    corpus = lstm.perplexity(["He was born in Zorblaxville ."])
    assert corpus.results[0].oov_convention == "unk-word"
    with pytest.raises(InputError) as err:
        lstm.score(["a"], oov_convention="closed")
    assert err.value.param == "oov_convention"


def test_a_model_without_an_estimate_stays_unk_word(tmp_path: Path, tiny_model: Path, tiny_corpus: Path) -> None:
    engine = Engine(load_model(tiny_model))
    assert engine.oov_penalty is None
    assert engine.score(["Zorblaxville is here ."], oov_convention="open-vocab")[0].oov_convention == "unk-word"
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model, folder)
    out = subprocess.run([sys.executable, "-m", "models.cli", "fit-oov", "--model", str(folder), "--data",
                          str(tiny_corpus)], check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    after = read_config(folder)
    assert set(after) - set(read_config(tiny_model)) == {"oov"}
    fitted = Engine(load_model(folder))
    assert fitted.oov_penalty == pytest.approx(after["oov"]["penalty"], abs=1e-4)
    assert fitted.score(["Zorblaxville is here ."], oov_convention="open-vocab")[0].oov_convention == "open-vocab"
