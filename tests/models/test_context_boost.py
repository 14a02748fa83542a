"""The title-word boost: an exact, renormalised distribution, and a fit that only ever helps."""
import json

import pytest
import torch

from models.checkpoint import load_model
from models.data import Stream, load_corpus
from models.engine import Engine
from models.evaluate import evaluate_stream, fit_context_boost
from models.rnnlm import RNNLM, ModelConfig

BOOST = [0.5, 2.0, 4.0]


def boosted_model(adaptive: bool, boost: list[float] = BOOST) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(ModelConfig(vocab_size=500, emb=16, hidden=16, layers=1, adaptive=adaptive, cutoffs=[50, 200],
                             context=True, context_boost=boost)).eval()


@pytest.mark.parametrize("adaptive", [False, True])
def test_boost_multiplies_topic_words_by_exp_boost_and_renormalises(adaptive):
    model = boosted_model(adaptive)
    words = model.context_words([7, 120, 480, 7])  # one word per frequency class, a repeat
    assert words.tolist() == [7, 120, 480]
    feats = torch.randn(13, 16)
    plain, boosted = model.log_probs(feats), model.log_probs(feats, words)
    assert torch.allclose(boosted.exp().sum(-1), torch.ones(13), atol=1e-5)
    # every ratio p'(w)/p(w) is the same 1/Z off the topic and e^b(w)/Z on it
    ratio = boosted - plain
    off = torch.ones(500, dtype=torch.bool)
    off[words] = False
    assert torch.allclose(ratio[:, off], ratio[:, :1].expand(-1, int(off.sum())), atol=1e-5)
    assert torch.allclose(ratio[:, words] - ratio[:, :1], torch.tensor(BOOST).expand(13, -1), atol=1e-5)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("topic", [[3, 60, 300, 499], [3, 60], [400]])  # words in every cluster, or some
def test_boosted_target_log_probs_equal_boosted_full_distribution(adaptive, topic):
    model = boosted_model(adaptive)
    words = model.context_words(topic)
    feats = torch.randn(41, 16)
    targets = torch.cat([words, torch.tensor([5, 100, 450]), torch.randint(0, 500, (38 - len(words),))])
    picked = model.log_probs(feats, words).gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(model.target_log_probs(feats, targets, chunk=8, words=words), picked, atol=1e-5)
    assert torch.allclose(model.word_log_probs(feats, words, chunk=5),
                          model.log_probs(feats)[:, words], atol=1e-5)


def test_no_boost_means_topic_words_change_nothing():
    model = boosted_model(adaptive=True, boost=[])
    assert model.context_words([1, 2]) is None
    feats, targets = torch.randn(9, 16), torch.randint(0, 500, (9,))
    assert torch.equal(model.log_probs(feats, torch.tensor([1, 2])), model.log_probs(feats))
    assert torch.equal(model.target_log_probs(feats, targets, words=torch.tensor([1, 2])),
                       model.target_log_probs(feats, targets))


def test_boost_needs_one_value_per_frequency_class():
    with pytest.raises(ValueError, match="one value per frequency class"):
        ModelConfig(vocab_size=500, cutoffs=[50, 200], context=True, context_boost=[1.0])
    # configs written before the boost existed load with none
    assert ModelConfig.from_dict({"vocab_size": 500, "context": True}).context_boost == []


def repeating_stream(n_titles: int = 6, length: int = 300) -> Stream:
    """Articles that use their own title words far more than the untrained model expects."""
    gen = torch.Generator().manual_seed(1)
    ids, titles, table = [], [], [[]]
    for t in range(1, n_titles + 1):
        title = torch.randint(1, 500, (2,), generator=gen).tolist()
        table.append(title)
        body = torch.randint(1, 500, (length,), generator=gen)
        body[torch.rand(length, generator=gen) < 0.2] = title[0]
        ids += body.tolist()
        titles += [t] * length
    return Stream(torch.tensor(ids), torch.tensor(titles), table, eos=0)


def test_fit_finds_the_boost_that_lowers_perplexity():
    model = boosted_model(adaptive=True, boost=[])
    data = repeating_stream()
    before = evaluate_stream(model, data).perplexity
    model.config.context_boost = fit_context_boost(model, data, rows=4)
    after = evaluate_stream(model, data).perplexity
    assert len(model.config.context_boost) == 3 and max(model.config.context_boost) > 1.0
    assert after < 0.8 * before


def test_trained_context_model_ships_a_fitted_boost(tiny_model, tiny_corpus):
    loaded = load_model(tiny_model)
    meta = json.loads((tiny_model / "config.json").read_text())
    assert len(loaded.config.context_boost) == loaded.config.num_classes
    corpus = load_corpus(tiny_corpus, vocab=loaded.tokenizer.vocab)
    fitted = evaluate_stream(loaded.model, corpus.valid).perplexity
    assert fitted == pytest.approx(meta["metrics"]["valid_ppl"], rel=1e-4)
    loaded.config.context_boost = []
    assert fitted <= evaluate_stream(loaded.model, corpus.valid).perplexity  # fitted there: never worse


def test_engine_scores_with_the_boost(tiny_model):
    engine = Engine(load_model(tiny_model))
    text, topic = "the song was released in the United States", "The Song"
    boosted = engine.score([text], context=topic)[0].logprob
    engine.model.config.context_boost = []
    assert boosted != pytest.approx(engine.score([text], context=topic)[0].logprob, abs=1e-4)
