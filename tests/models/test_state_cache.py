"""The recurrent-state cache: same answers as reading the whole prefix, new tokens only, bounded memory."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import LoadedModel, load_model
from models.engine import Engine, GenerationParams
from models.state_cache import ENTRY_BYTES, NODE_BYTES, StateCache

SENTENCE = ("The game was released in Japan in 2011 , and it was the first game of the series to be "
            "released in North America . It received positive reviews from critics").split()


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    return load_model(tiny_model)


def same_predictions(a, b) -> None:
    assert a.prefix == b.prefix and a.context_used == b.context_used
    assert [p.word for p in a.predictions] == [p.word for p in b.predictions]
    assert [p.prob for p in a.predictions] == pytest.approx([p.prob for p in b.predictions], abs=1e-5)


def count_read_tokens(engine: Engine) -> list[int]:
    """Record how many tokens each call to the model's recurrence reads."""
    seen: list[int] = []
    features = engine.model.features

    def spy(inputs, *args, **kwargs):
        seen.append(inputs.shape[1])
        return features(inputs, *args, **kwargs)
    engine.model.features = spy
    return seen


@pytest.mark.parametrize("context", [None, "Tropical Storm"])
def test_typing_word_by_word_matches_uncached(loaded: LoadedModel, context: str | None) -> None:
    cached, plain = Engine(loaded), Engine(loaded, state_cache_bytes=0)
    typed = ""
    for word in SENTENCE:
        for text in (typed + word[:2], typed + word + " "):  # mid-word completion, then the next word
            same_predictions(cached.next_word(text, k=5, context=context),
                             plain.next_word(text, k=5, context=context))
        typed += word + " "
    stats = cached.state_cache.stats()
    assert stats["misses"] == 1 and stats["hits"] == 2 * len(SENTENCE) - 1
    assert plain.state_cache.stats()["hits"] == 0 and len(plain.state_cache) == 0


def test_a_keystroke_reads_only_the_new_tokens(loaded: LoadedModel) -> None:
    engine = Engine(loaded)
    engine.next_word(" ".join(SENTENCE[:20]) + " ")
    read = count_read_tokens(engine)
    engine.next_word(" ".join(SENTENCE[:21]) + " ")        # one more word
    engine.next_word(" ".join(SENTENCE[:21]) + " rel")     # typing inside the next word: nothing to read
    engine.next_word(" ".join(SENTENCE[:23]) + " ")        # two more words
    assert read == [1, 2]


def test_jumping_back_and_switching_context(loaded: LoadedModel) -> None:
    cached, plain = Engine(loaded), Engine(loaded, state_cache_bytes=0)
    texts = [" ".join(SENTENCE[:n]) + " " for n in (25, 10, 3, 18, 25, 0)]
    for context in (None, "Tropical Storm", "Tropical Storm", None):
        for text in texts:
            same_predictions(cached.next_word(text, k=8, context=context), plain.next_word(text, k=8, context=context))


def test_generation_with_cache_equals_without(loaded: LoadedModel) -> None:
    cached, plain = Engine(loaded), Engine(loaded, state_cache_bytes=0)
    params = dict(max_tokens=15, temperature=0.8, top_k=40, seed=3, n=3)
    for prompt, context in (("The game was", None), ("The game was", None), ("The game was released", None),
                            ("The game was released", "Valkyria"), ("", None)):
        a = cached.generate(prompt, GenerationParams(**params), context=context)
        b = plain.generate(prompt, GenerationParams(**params), context=context)
        assert [c.tokens for c in a.choices] == [c.tokens for c in b.choices]
        assert [c.logprob for c in a.choices] == pytest.approx([c.logprob for c in b.choices], abs=1e-4)
        assert [c.finish_reason for c in a.choices] == [c.finish_reason for c in b.choices]
    assert cached.state_cache.stats()["hits"] >= 2  # the repeated prompt, and its extension
    stream = list(cached.stream("The game was", GenerationParams(**params)))
    assert stream[-1].finish_reason is not None


def test_eviction_keeps_memory_within_the_bound(loaded: LoadedModel) -> None:
    bound = 40_000  # a few entries of this tiny model
    cached, plain = Engine(loaded, state_cache_bytes=bound), Engine(loaded, state_cache_bytes=0)
    for start in range(0, 20):
        text = " ".join(SENTENCE[start:start + 12]) + " "
        same_predictions(cached.next_word(text), plain.next_word(text))
        assert cached.state_cache.bytes <= bound
    stats = cached.state_cache.stats()
    assert stats["evictions"] > 0 and 0 < stats["entries"] < 20


def test_cache_finds_the_longest_prefix_and_prunes() -> None:
    events: list[tuple[str, int]] = []
    cache = StateCache(10_000, listener=lambda e, v: events.append((e, v)))
    feat, state = torch.zeros(1, 4), (torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))
    assert cache.lookup(None, [1, 2, 3]) is None
    cache.store(None, [1, 2], feat, state)
    cache.store(None, [1, 2, 3, 4], feat + 1, state)
    cache.store("topic", [1, 2, 3], feat + 2, state)
    hit = cache.lookup(None, [1, 2, 3, 9])
    assert hit.length == 2 and float(hit.feature[0, 0]) == 0
    assert cache.lookup(None, [1, 2, 3, 4, 5]).length == 4
    assert cache.lookup("topic", [1, 2, 3]).length == 3
    assert cache.lookup("other", [1, 2, 3]) is None
    assert cache.lookup(None, [7]) is None
    assert ("hit", 1) in events and ("miss", 1) in events
    small = StateCache(3 * (NODE_BYTES * 3 + ENTRY_BYTES))  # room for about two entries
    for i in range(50):
        small.store(None, [i, i + 1], feat, state)
        assert small.bytes <= small.max_bytes
    while small._lru:
        small._drop(small._lru.popitem(last=False)[1])
    assert small.bytes == 0 and not small._roots  # no orphaned trie nodes


def test_state_cache_off(loaded: LoadedModel) -> None:
    engine = Engine(loaded, state_cache_bytes=0)
    engine.next_word("The game ")
    engine.next_word("The game ")
    assert engine.state_cache.stats() == {"hits": 0, "misses": 0, "evictions": 0, "bytes": 0, "entries": 0,
                                          "max_bytes": 0}


@pytest.mark.parametrize("arch", ["lstm", "gru", "rnn"])
def test_short_inputs_cell_by_cell_equal_the_fused_module(arch: str) -> None:
    """A keystroke's few new tokens skip the fused kernel's setup; the values must not change."""
    from models.rnnlm import RNNLM, STEP_TOKENS, ModelConfig

    torch.manual_seed(0)
    model = RNNLM(ModelConfig(arch=arch, vocab_size=300, emb=16, hidden=24, layers=2, cutoffs=[50, 200],
                              context=True)).eval()
    with torch.inference_mode():
        for steps in range(1, STEP_TOKENS + 1):
            inputs, context = torch.randint(0, 300, (3, steps)), torch.randn(3, 16)
            state = model.init_state(3)
            state = tuple(torch.randn_like(s) for s in state) if isinstance(state, tuple) else torch.randn_like(state)
            feats, new_state = model.features(inputs, state, context)
            x = torch.cat([model.encoder(inputs), context[:, None].expand(-1, steps, -1)], dim=-1)
            fused, fused_state = model.rnn(x, state)
            assert torch.allclose(feats, fused, atol=1e-6)
            for a, b in zip(new_state if isinstance(new_state, tuple) else [new_state],
                            fused_state if isinstance(fused_state, tuple) else [fused_state]):
                assert torch.allclose(a, b, atol=1e-6)


def test_recent_prefixes_and_the_walk_agree(monkeypatch) -> None:
    """Found by hashing (the query or a few tokens shorter) or by walking the trie, the answer is the same."""
    import models.state_cache as state_cache

    monkeypatch.setattr(state_cache, "RECENT_IDS", 40)  # the index forgets all but the last few prefixes
    feat, state = torch.zeros(1, 4), (torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))
    cache = StateCache(10_000_000)
    text = list(range(100, 160))
    for n in range(0, 60, 5):  # typed on, one 5-token word at a time
        found = cache.lookup(None, text[:n])
        assert (found.length if found else 0) == max(0, n - 5) or n == 0
        cache.store(None, text[:n], feat + n, state, after=found)
    assert len(cache) == 12
    for n in range(60):  # every prefix finds its longest stored one: old ones by the walk, recent by hash
        found = cache.lookup(None, text[:n] + [7])
        assert found.length == n - n % 5 and float(found.feature[0, 0]) == n - n % 5
    # a store that starts from a lookup whose entry was evicted meanwhile walks from the root instead
    small = StateCache(3 * (NODE_BYTES * 12 + ENTRY_BYTES))
    small.store(None, [1, 2], feat, state)
    found = small.lookup(None, [1, 2, 3])
    for i in range(20):
        small.store(None, [50 + i, 60 + i], feat, state)
    small.store(None, [1, 2, 3], feat + 3, state, after=found)
    assert small.lookup(None, [1, 2, 3, 4]).length == 3 and small.bytes <= small.max_bytes
