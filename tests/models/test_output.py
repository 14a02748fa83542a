"""The output layer's one chunked pass agrees with the full distribution, for every layout and chunk."""
import pytest
import torch

from models import output
from models.rnnlm import RNNLM, ModelConfig


def model(adaptive: bool, tie: bool = False) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(ModelConfig(vocab_size=400, emb=12, hidden=16, layers=1, adaptive=adaptive, tie=tie,
                             cutoffs=[40, 150], context=True, context_boost=[0.3, 1.0, 2.0])).eval()


@pytest.mark.parametrize("adaptive, tie", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("chunk", [None, 1, 7, 1000])
def test_targets_and_topic_words_match_the_full_distribution(adaptive, tie, chunk):
    m = model(adaptive, tie)
    width = m.proj.out_features if m.proj is not None else 16
    feats = torch.randn(23, width)
    targets = torch.randint(0, 400, (23,))
    words = torch.tensor([5, 60, 399])  # one word in each frequency class
    full = m.log_probs(feats)
    picked, at_words = output.target_and_word_log_probs(m, feats, targets, words, chunk)
    assert torch.allclose(picked, full.gather(1, targets[:, None]).squeeze(1), atol=1e-5)
    assert torch.allclose(at_words, full[:, words], atol=1e-5)
    alone, none = output.target_and_word_log_probs(m, feats, targets, None, chunk)
    assert torch.allclose(alone, picked, atol=1e-5) and none.shape == (23, 0)
    boosted = m.log_probs(feats, words)
    assert torch.allclose(m.target_log_probs(feats, targets, chunk, words),
                          boosted.gather(1, targets[:, None]).squeeze(1), atol=1e-5)


def test_forward_gives_the_loss_of_the_features():
    m = model(True).train()
    inputs, targets = torch.randint(0, 400, (3, 9)), torch.randint(0, 400, (3, 9))
    torch.manual_seed(1)
    loss, state = m(inputs, targets=targets)
    torch.manual_seed(1)
    feats, again = m.features(inputs)
    assert loss.item() == pytest.approx(m.loss(feats, targets).item(), rel=1e-6)
    assert torch.equal(state[0], again[0])
