"""The model math: perplexity definitions, exact output layers, state carrying."""
import math

import pytest
import torch

from models.data import Stream, batchify, tbptt_windows
from models.evaluate import evaluate_stream
from models.rnnlm import RNNLM, ModelConfig, detach_state


def constant_model(log_p: torch.Tensor, arch: str = "lstm") -> RNNLM:
    """A model whose next-word distribution ignores the input: decoder weights 0, bias log p."""
    model = RNNLM(ModelConfig(arch=arch, vocab_size=log_p.numel(), emb=8, hidden=8, layers=1, adaptive=False))
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.copy_(log_p)
    return model.eval()


def stream(ids: list[int], eos: int) -> Stream:
    t = torch.tensor(ids)
    return Stream(t, torch.zeros_like(t), [[]], eos)


@pytest.mark.parametrize("vocab_size", [7, 100, 33278])
def test_uniform_model_has_perplexity_exactly_vocab_size(vocab_size):
    model = constant_model(torch.zeros(vocab_size))
    ids = torch.randint(0, vocab_size, (500,), generator=torch.Generator().manual_seed(0)).tolist()
    score = evaluate_stream(model, stream(ids, eos=0))
    assert score.num_tokens == 500
    assert score.perplexity == pytest.approx(vocab_size, rel=1e-6)


def test_hand_computed_three_word_perplexity():
    # p = (0.5, 0.25, 0.125, 0.125) over {<eos>, a, b, c}; "a b c" -> tokens a, b, c (no eos)
    p = torch.tensor([0.5, 0.25, 0.125, 0.125])
    model = constant_model(p.log())
    score = evaluate_stream(model, stream([1, 2, 3], eos=0))
    expected = math.exp(-(math.log(0.25) + math.log(0.125) + math.log(0.125)) / 3)  # = 2^(8/3)
    assert score.perplexity == pytest.approx(expected, rel=1e-6)
    assert score.perplexity == pytest.approx(2 ** (8 / 3), rel=1e-6)


@pytest.mark.parametrize("adaptive", [False, True])
def test_target_log_probs_equal_full_distribution(adaptive):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=500, emb=16, hidden=16, layers=1, adaptive=adaptive,
                              cutoffs=[50, 200])).eval()
    feats = torch.randn(37, 16)
    targets = torch.randint(0, 500, (37,))
    full = model.log_probs(feats)
    assert torch.allclose(full.exp().sum(-1), torch.ones(37), atol=1e-5)
    picked = full.gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(model.target_log_probs(feats, targets, chunk=8), picked, atol=1e-5)
    assert model.loss(feats, targets).item() == pytest.approx(-picked.mean().item(), rel=1e-5)


def test_tied_embeddings_share_storage():
    model = RNNLM(ModelConfig(vocab_size=100, emb=16, hidden=24, layers=1, adaptive=False, tie=True))
    assert model.decoder.weight is model.encoder.weight
    assert model.proj is not None  # hidden != emb needs a projection before the tied decoder


def test_batchify_shapes_and_contiguous_rows():
    data = torch.arange(103)
    b = batchify(data, 4)
    assert b.shape == (4, 25)
    assert b[1, 0] == 25 and b[1, -1] == 49  # each row is a contiguous slice of the stream
    windows = list(tbptt_windows(b, b, 7))
    assert [w[0].shape[1] for w in windows] == [7, 7, 7, 3]
    for inputs, targets, _ in windows:
        assert torch.equal(targets, inputs + 1)  # targets are the next tokens
    assert torch.equal(torch.cat([w[0] for w in windows], 1), b[:, :-1])


@pytest.mark.parametrize("arch", ["lstm", "gru", "rnn"])
def test_state_carries_across_windows(arch):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(arch=arch, vocab_size=50, emb=8, hidden=12, layers=2, adaptive=False)).eval()
    data = batchify(torch.randint(0, 50, (400,)), 4)
    whole, _ = model.features(data)
    state, parts = None, []
    for start in range(0, data.shape[1], 9):
        feats, state = model.features(data[:, start:start + 9], state)
        state = detach_state(state)
        parts.append(feats)
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-5)
    fresh, _ = model.features(data[:, 9:18])
    assert not torch.allclose(fresh, whole[:, 9:18], atol=1e-3)  # without the carried state it differs


def test_context_changes_predictions_and_zero_context_means_none():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=60, emb=8, hidden=8, layers=1, adaptive=False, context=True)).eval()
    x = torch.randint(0, 60, (2, 5))
    none, _ = model.features(x)
    zeros, _ = model.features(x, context=torch.zeros(2, 8))
    topic = model.context_vector(torch.tensor([3, 4]), torch.tensor([0]))
    with_topic, _ = model.features(x, context=topic.expand(2, -1))
    assert torch.allclose(none, zeros)
    assert not torch.allclose(none, with_topic)
