"""Rows with different topics scored in one pass equal the full boosted distribution of each row's topic."""
import pytest
import torch

from models import output
from models.checkpoint import load_model
from models.data import Stream
from models.engine import Engine
from models.evaluate import evaluate_stream, fit_context_boost
from models.quantize import quantize_int8
from models.rnnlm import RNNLM, ModelConfig

V, CUTOFFS = 400, [40, 150]
# word 5 and 7 in the head, 60 and 149 in the first tail, 150 and 399 in the second; a repeat; one word;
# one tail word only; an empty topic (no boost)
TOPICS = [[5, 60, 399], [7, 7, 149, 150], [399], [60], [], [5, 7]]


def model(adaptive: bool = True, tie: bool = False, boost: list[float] | None = None) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(ModelConfig(vocab_size=V, emb=12, hidden=16, layers=1, adaptive=adaptive, tie=tie,
                             cutoffs=CUTOFFS, context=True,
                             context_boost=[0.3, 1.5, 3.0] if boost is None else boost)).eval()


def width(m: RNNLM) -> int:
    return m.proj.out_features if m.proj is not None else m.config.hidden


def reference(m: RNNLM, feats: torch.Tensor, targets: torch.Tensor, topics: torch.Tensor) -> torch.Tensor:
    """log p(target) row by row from the whole boosted distribution of the row's own topic."""
    out = []
    for f, t, k in zip(feats, targets, topics.tolist()):
        words = m.context_words(TOPICS[k]) if TOPICS[k] else None
        out.append(m.log_probs(f[None], words)[0, t])
    return torch.stack(out)


def rows(m: RNNLM, n: int = 60) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, targets (every topic word among them, so each boost is hit) and a topic per row."""
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(n, width(m), generator=gen)
    words = torch.tensor(sorted({w for t in TOPICS for w in t}))
    targets = torch.cat([words, torch.randint(0, V, (n - len(words),), generator=gen)])
    topics = torch.randint(0, len(TOPICS), (n,), generator=gen)
    return feats, targets, topics


@pytest.mark.parametrize("adaptive, tie", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_rows_with_different_topics_equal_each_topics_full_distribution(adaptive, tie, chunk):
    m = model(adaptive, tie)
    feats, targets, topics = rows(m)
    table = output.topic_table(m, TOPICS)
    got = output.topic_target_log_probs(m, feats, targets, topics, table, chunk)
    assert torch.allclose(got, reference(m, feats, targets, topics), atol=1e-5)


@pytest.mark.parametrize("adaptive", [True, False])
def test_each_rows_topic_words_get_their_unboosted_log_probs(adaptive):
    m = model(adaptive)
    feats, targets, topics = rows(m)
    table = output.topic_table(m, TOPICS)
    words = table.words[topics]
    picked, at_words = output.target_and_word_log_probs(m, feats, targets, words, chunk=5)
    full = m.log_probs(feats)
    assert torch.allclose(picked, full.gather(1, targets[:, None]).squeeze(1), atol=1e-5)
    assert torch.allclose(at_words, full.gather(1, words), atol=1e-5)


def test_topic_table_pads_with_a_word_that_changes_nothing():
    m = model()
    table = output.topic_table(m, [[], [60, 5, 60], None])
    assert table.words.shape == (3, 2)
    assert table.words[1].tolist() == [5, 60] and table.valid.tolist() == [[False, False], [True, True],
                                                                            [False, False]]
    assert table.boost[1].tolist() == pytest.approx([0.3, 1.5]) and not table.boost[0].any()
    feats, targets = torch.randn(9, width(m)), torch.randint(0, V, (9,))
    empty = output.topic_target_log_probs(m, feats, targets, torch.zeros(9, dtype=torch.long), table)
    assert torch.allclose(empty, m.target_log_probs(feats, targets), atol=1e-6)


def test_a_model_without_a_fitted_boost_gets_a_zero_table():
    m = model(boost=[])
    table = output.topic_table(m, TOPICS)
    feats, targets, topics = rows(m)
    assert not table.boost.any()
    assert torch.allclose(output.topic_target_log_probs(m, feats, targets, topics, table),
                          m.target_log_probs(feats, targets), atol=1e-6)


def test_an_int8_model_scores_topics_through_its_own_layers():
    m = quantize_int8(model())
    feats, targets, topics = rows(m)
    got = output.topic_target_log_probs(m, feats, targets, topics, output.topic_table(m, TOPICS))
    # dynamic int8 picks its activation scale per call, so rows scored row by row differ by that noise
    assert torch.allclose(got, reference(m, feats, targets, topics), atol=0.05)
    assert not torch.allclose(got, reference(model(), feats, targets, topics), atol=1e-5)


def test_with_autograd_the_scores_are_the_same_and_differentiable():
    m = model()
    feats, targets, topics = rows(m)
    table = output.topic_table(m, TOPICS)
    with torch.inference_mode():
        frozen = output.topic_target_log_probs(m, feats, targets, topics, table)
    graded = output.topic_target_log_probs(m, feats.requires_grad_(), targets, topics, table)
    graded.sum().backward()
    assert torch.allclose(graded.detach(), frozen, atol=1e-5)
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def titled_stream(m: RNNLM) -> Stream:
    """Three articles, each using its title's words, and a stretch with no title (title 0)."""
    gen = torch.Generator().manual_seed(5)
    table = [[], [5, 60, 399], [149, 150, 150], [7]]
    ids, titles = [], []
    for t in [0, 1, 2, 3, 1]:
        body = torch.randint(1, V, (70,), generator=gen)
        if table[t]:
            pick = torch.rand(70, generator=gen) < 0.3
            body[pick] = torch.tensor(table[t])[torch.randint(0, len(table[t]), (int(pick.sum()),), generator=gen)]
        ids += body.tolist()
        titles += [t] * 70
    return Stream(torch.tensor(ids), torch.tensor(titles), table, eos=0)


def test_evaluate_stream_with_titles_equals_token_by_token_full_distributions():
    m = model()
    data = titled_stream(m)
    with torch.inference_mode():
        inputs = torch.cat([torch.tensor([data.eos]), data.ids[:-1]])
        vectors = m.context_vector(*data.title_table())[data.titles]
        feats, _ = m.features(inputs[None], None, vectors[None])
        nll = 0.0
        for f, target, title in zip(feats[0], data.ids.tolist(), data.titles.tolist()):
            words = m.context_words(data.title_words[title]) if data.title_words[title] else None
            nll -= m.log_probs(f[None], words)[0, target].double().item()
    score = evaluate_stream(m, data, rows=1, window=1000)
    assert score.num_tokens == len(data)
    assert score.nll == pytest.approx(nll, rel=1e-5)
    assert evaluate_stream(m, data, rows=3, window=16).num_tokens == len(data)  # windows and segments too


def test_the_fitted_boost_minimises_the_evaluated_perplexity():
    m = model(boost=[])
    data = titled_stream(m)
    fitted = fit_context_boost(m, data, rows=2, window=32)
    m.config.context_boost = fitted
    best = evaluate_stream(m, data, rows=2, window=32).nll
    for c in range(3):
        for step in (-0.1, 0.1):
            m.config.context_boost = [b + step * (i == c) for i, b in enumerate(fitted)]
            assert evaluate_stream(m, data, rows=2, window=32).nll >= best - 1e-3


def test_engine_scores_a_topic_like_its_full_distribution(tiny_model):
    engine = Engine(load_model(tiny_model), state_cache_bytes=0)
    m, itos = engine.model, engine.vocab.itos
    m.config.context_boost = [1.0, 2.0, 3.0][: m.config.num_classes]
    alpha = [i for i, w in enumerate(itos) if w.isalpha()]
    chosen = [alpha[3], alpha[len(alpha) // 2], alpha[-1]]  # frequent, middling, rare
    topic = " ".join(itos[i] for i in chosen)
    texts = [[alpha[5], chosen[1], alpha[9], chosen[2]], [chosen[0], alpha[40]], [alpha[7]] * 9]
    scored = engine.score(texts, context=topic)
    context = engine.resolve_context(topic)
    assert context.used and context.topic is not None
    with torch.inference_mode():
        for ids, result in zip(texts, scored):
            inputs = torch.tensor([engine.vocab.eos] + ids)
            feats, _ = m.features(inputs[None], None, context.vector)
            full = m.log_probs(feats[0], context.words)
            expected = full.gather(1, torch.tensor(ids + [engine.vocab.eos])[:, None]).squeeze(1)
            assert [t.logprob for t in result.tokens] == pytest.approx(expected.tolist(), abs=1e-4)
