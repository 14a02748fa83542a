"""The engine's scoring options used by /v1/completions: token-id input and the top-k alternatives of every
position from the same pass; generation's per-step alternatives and the <eos> it ends on."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_model
from models.engine import Engine, GenerationParams
from models.errors import InputError

TEXTS = ["The game was released in Japan .", "He was born in London in 1950 ."]


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Engine:
    return Engine(load_model(tiny_model, name="tiny"))


def test_token_ids_score_like_text(engine: Engine) -> None:
    ids = [engine.encode(t).ids for t in TEXTS]
    by_text, by_ids = engine.score(TEXTS), engine.score(ids)
    assert [s.logprob for s in by_ids] == [s.logprob for s in by_text]
    # ids name vocabulary words: a word the vocabulary lacks was <unk> already
    assert [[t.token for t in s.tokens] for s in by_ids] == [["<unk>" if t.oov else t.token for t in s.tokens]
                                                             for s in by_text]
    assert all(not t.oov for s in by_ids for t in s.tokens)
    with pytest.raises(InputError) as err:
        engine.score([[1, len(engine.vocab)]])
    assert err.value.param == "texts.0"


@pytest.mark.parametrize("context", [None, "Valkyria Chronicles"])
def test_top_alternatives_come_with_the_same_scores(engine: Engine, context: str | None) -> None:
    plain = engine.score(TEXTS, context=context)
    top = engine.score(TEXTS, context=context, top_logprobs=4)
    for a, b in zip(plain, top):
        assert [t.logprob for t in b.tokens] == pytest.approx([t.logprob for t in a.tokens], abs=1e-5)
        for token in b.tokens:
            values = [v for _, v in token.top]
            assert len(token.top) == 4 and values == sorted(values, reverse=True)
            assert token.logprob <= values[0] + 1e-6
            if token.token in dict(token.top):  # the same pass: the very same number
                assert dict(token.top)[token.token] == token.logprob
    assert all(t.top is None for s in plain for t in s.tokens)


def test_top_alternatives_are_the_distribution_s_best(engine: Engine) -> None:
    scored = engine.score(["The game"], add_eos=False, top_logprobs=3)[0]
    ids = engine.encode("The game").ids
    with torch.inference_mode():
        feats, _ = engine.model.features(torch.tensor([[engine.vocab.eos] + ids[:-1]]), None, None)
        logp = engine.model.log_probs(feats[0], None)
    for position, token in enumerate(scored.tokens):
        best = logp[position].topk(3)
        assert [w for w, _ in token.top] == [engine.vocab.itos[i] for i in best.indices.tolist()]


def test_generation_reports_alternatives_and_the_end(engine: Engine) -> None:
    events = list(engine.stream("The game", GenerationParams(max_tokens=40, temperature=0, logprobs=2)))
    tokens = [e for e in events if e.finish_reason is None]
    assert all(len(e.top) == 2 and e.logprob <= e.top[0][1] + 1e-6 for e in tokens)
    final = events[-1]
    assert final.token is None
    if final.finish_reason == "eos":
        assert final.logprob is not None and final.logprob <= 0
    ids = engine.encode("The game").ids
    from_ids = list(engine.stream(ids, GenerationParams(max_tokens=40, temperature=0)))
    assert [e.token for e in from_ids] == [e.token for e in events]
