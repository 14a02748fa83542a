"""The neural cache: its math against a plain loop, its fit, the engine's document scoring and next word,
and the commands that fit it and evaluate with it."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_model, read_config
from models.data import encode_lines, read_lines
from models.engine import Engine
from models.errors import InputError
from models.neural_cache import (
    CacheParams,
    TypedMemory,
    cache_log_probs,
    document_log_probs,
    fit_cache,
    next_word_probs,
    stream_features,
    write_cache_block,
)

ROOT = Path(__file__).resolve().parents[2]


def naive_cache_log_probs(feats: torch.Tensor, targets: torch.Tensor, p: CacheParams) -> list[float]:
    out = []
    for t in range(len(targets)):
        keys = range(max(0, t - p.window), t)
        if not keys:
            out.append(math.nan)
            continue
        w = {i: math.exp(p.theta * float(feats[t] @ feats[i])) for i in keys}
        num = sum(v for i, v in w.items() if targets[i] == targets[t])
        out.append(math.log(num / sum(w.values())) if num else -math.inf)
    return out


def test_cache_term_matches_a_plain_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(300, 8, generator=gen)
    targets = torch.randint(0, 12, (300,), generator=gen)
    params = CacheParams(theta=0.7, lam=0.2, window=40)
    got = cache_log_probs(feats, targets, params, chunk=32).tolist()
    want = naive_cache_log_probs(feats, targets, params)
    assert math.isnan(got[0]) and math.isnan(want[0])
    assert got[1:] == pytest.approx(want[1:], abs=1e-4)
    model_lp = torch.full((300,), math.log(1 / 12), dtype=torch.float64)
    mixed = document_log_probs(feats, targets, model_lp, params)
    assert mixed[0] == model_lp[0]  # nothing cached yet: the model alone
    expected = [math.log(0.8 / 12 + 0.2 * math.exp(c)) for c in want[1:]]
    assert mixed[1:].tolist() == pytest.approx(expected, abs=1e-5)


def test_next_word_mixture_matches_a_plain_loop() -> None:
    torch.manual_seed(0)
    feats, words = torch.randn(9, 4), torch.tensor([3, 1, 3, 0, 5, 1, 3, 2])
    log_probs = torch.log_softmax(torch.randn(6), 0)
    for p in (CacheParams(0.7, 0.2, 100), CacheParams(1.3, 0.4, 3)):
        keys = range(max(0, 8 - p.window), 8)
        w = {i: math.exp(p.theta * float(feats[8] @ feats[i])) for i in keys}
        want = [(1 - p.lam) * math.exp(lp) + p.lam * sum(v for i, v in w.items() if words[i] == word) / sum(w.values())
                for word, lp in enumerate(log_probs.tolist())]
        got = next_word_probs(log_probs, feats, words, p)
        assert got.tolist() == pytest.approx(want, abs=1e-6) and float(got.sum()) == pytest.approx(1.0, abs=1e-6)
    # nothing typed yet: the model's distribution alone
    assert torch.allclose(next_word_probs(log_probs, feats[:1], words[:0], p), log_probs.exp())


def test_bad_parameters_are_refused() -> None:
    for bad in ((0.0, 0.1, 10), (1.0, 0.0, 10), (1.0, 1.0, 10), (1.0, 0.1, 0)):
        with pytest.raises(ValueError):
            CacheParams(*bad)


@pytest.fixture(scope="module")
def cached_model(tmp_path_factory, tiny_model: Path, tiny_corpus: Path) -> tuple[Path, dict]:
    """A copy of the tiny model with a cache fitted on its validation text."""
    folder = tmp_path_factory.mktemp("cached") / "tiny"
    shutil.copytree(tiny_model, folder)
    loaded = load_model(folder)
    valid = encode_lines(read_lines(tiny_corpus / "valid.txt"), loaded.tokenizer.vocab, titles=True)
    fit = fit_cache(stream_features(loaded.model, valid), windows=(50, 200), theta_scales=(0.5, 1.0, 2.0))
    write_cache_block(folder, fit.params, {"fitted_on": "slice/valid"})
    return folder, {"fit": fit}


def test_fit_lowers_validation_perplexity(cached_model) -> None:
    fit = cached_model[1]["fit"]
    assert fit.perplexity < fit.perplexity_without
    assert len(fit.grid) == 6 and fit.params.window in (50, 200)
    assert min(g["perplexity"] for g in fit.grid) == pytest.approx(fit.perplexity, rel=1e-4)


def test_write_adds_only_the_cache_block(cached_model, tiny_model: Path) -> None:
    folder = cached_model[0]
    before, after = read_config(tiny_model), read_config(folder)
    assert set(after) - set(before) == {"cache"}
    assert {k: v for k, v in after.items() if k != "cache"} == before
    assert CacheParams.from_meta(after) == cached_model[1]["fit"].params


DOC = ["Zorblax Quentin was born in 1950 .", "Quentin played for the club .",
       "In 1980 , Quentin moved to the city ."]


def test_document_scoring_helps_repeated_words(cached_model) -> None:
    engine = Engine(load_model(cached_model[0]))
    plain, cached = engine.score(DOC), engine.score(DOC, cache=True)
    assert all(s.cache for s in cached) and not any(s.cache for s in plain)
    # the first text has nothing before its first word: that token is the model's alone
    assert cached[0].tokens[0].logprob == pytest.approx(plain[0].tokens[0].logprob, abs=1e-5)
    # a word seen earlier in the document is more probable the second time
    second = next(t for t in cached[1].tokens if t.token == "Quentin").logprob
    assert second > next(t for t in plain[1].tokens if t.token == "Quentin").logprob
    assert sum(t.logprob for t in cached[2].tokens) == pytest.approx(cached[2].logprob, abs=1e-4)
    # texts form one document: the order matters
    assert engine.score(DOC[::-1], cache=True)[0].logprob != pytest.approx(cached[2].logprob, abs=1e-6)
    corpus = engine.perplexity(DOC, cache=True)
    assert corpus.nll == pytest.approx(-sum(s.logprob for s in cached), rel=1e-6)


def test_a_model_without_a_cache_says_so(tiny_model: Path) -> None:
    engine = Engine(load_model(tiny_model))
    with pytest.raises(InputError) as err:
        engine.score(DOC, cache=True)
    assert err.value.param == "cache" and "fit-cache" in str(err.value)
    with pytest.raises(InputError):
        engine.next_word("He was ", cache=True)


def test_next_word_suggests_a_typed_name(tmp_path: Path) -> None:
    """With the shipped lstm: a name typed earlier comes back when its first letters are typed again."""
    folder = tmp_path / "lstm"
    shutil.copytree(ROOT / "checkpoints" / "lstm", folder)
    write_cache_block(folder, CacheParams(theta=0.7, lam=0.15, window=500), {})
    engine = Engine(load_model(folder))
    text = "Zorblax Quentin was born in 1950 . Later Qu"
    without = engine.next_word(text, k=3)
    with_cache = engine.next_word(text, k=3, cache=True)
    assert without.predictions[0].word != "Quentin"
    assert with_cache.predictions[0].word == "Quentin"
    assert with_cache.predictions[0].prob > 0.5
    assert sum(p.prob for p in with_cache.predictions) <= 1 + 1e-5


def test_next_word_cache_reads_only_new_words_and_agrees_with_a_fresh_engine(cached_model) -> None:
    folder = cached_model[0]
    typed = Engine(load_model(folder))
    keys = "The club played in the city . The club "
    for end in range(1, len(keys) + 1):  # one request per keystroke, as a typing UI sends them
        last = typed.next_word(keys[:end], k=5, cache=True)
    fresh = Engine(load_model(folder)).next_word(keys, k=5, cache=True)
    assert [p.word for p in last.predictions] == [p.word for p in fresh.predictions]
    assert [p.prob for p in last.predictions] == pytest.approx([p.prob for p in fresh.predictions], abs=1e-5)
    shorter = typed.next_word("The club ", k=5, cache=True)  # backspacing: a prefix of what was typed
    assert [p.word for p in shorter.predictions] == \
        [p.word for p in Engine(load_model(folder)).next_word("The club ", k=5, cache=True).predictions]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models.cli", *args], check=False, capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_fit_cache_and_eval_cache_commands(tmp_path: Path, tiny_model: Path, tiny_corpus: Path) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model, folder)
    no_cache = run_cli("eval", "--model", str(folder), "--data", str(tiny_corpus), "--cache", "--json")
    assert no_cache.returncode == 1 and "fit-cache" in no_cache.stderr
    fitted = run_cli("fit-cache", "--model", str(folder), "--data", str(tiny_corpus), "--lines", "150", "--json",
                     "--report-test")
    assert fitted.returncode == 0, fitted.stderr
    report = json.loads(fitted.stdout)
    assert report["valid_ppl"] < report["valid_ppl_without"]
    assert read_config(folder)["cache"]["window"] == report["cache"]["window"]
    plain = json.loads(run_cli("eval", "--model", str(folder), "--data", str(tiny_corpus), "--json").stdout)
    cached = run_cli("eval", "--model", str(folder), "--data", str(tiny_corpus), "--cache", "--json")
    assert cached.returncode == 0, cached.stderr
    cached = json.loads(cached.stdout)
    assert cached["cache"]["theta"] == report["cache"]["theta"]
    assert cached["num_tokens"] == plain["num_tokens"]
    assert cached["perplexity"] == pytest.approx(report["test_ppl"], rel=1e-3)
    assert plain["perplexity"] == pytest.approx(report["test_ppl_without"], rel=1e-3)


def test_typed_memory_agrees_with_reading_each_text_whole(tiny_model: Path) -> None:
    """Texts typed on, shortened, then taken elsewhere (rows copied, earlier ones untouched), in two contexts."""
    loaded = load_model(tiny_model)
    engine = Engine(loaded)
    model, eos = loaded.model, loaded.tokenizer.vocab.eos
    ids = loaded.tokenizer.encode("The club played in the city and the game was released in Japan in 2011 ,"
                                  " and it was the first game of the series").ids * 3  # past a buffer's first 64 rows
    storm = engine.resolve_context("Tropical Storm")
    memory = TypedMemory(entries=8)
    plain = model.features

    def whole(n: int, vector) -> torch.Tensor:
        with torch.inference_mode():
            return plain(torch.tensor([[eos, *ids[:n]]]), None, vector)[0][0]

    read = count_reads(model)
    lengths = [*range(0, len(ids) + 1), 12, 5, 9, 20, len(ids), 3]
    kept = []
    for key, vector in ((None, None), (storm.key, storm.vector)):
        for n in lengths:
            with torch.inference_mode():
                feats, words = memory.features(model, key, ids[:n], eos, vector)
            assert torch.allclose(feats, whole(n, vector), atol=1e-5) and words.tolist() == ids[:n]
            kept.append((feats, n, vector))
    # typing on reads one token a keystroke; a shortened text reads nothing; each context starts afresh
    assert read == [1] * (len(ids) + 1) * 2
    # the views handed out before are still right after the buffers grew in place and were copied
    for feats, n, vector in kept:
        assert torch.allclose(feats, whole(n, vector), atol=1e-5)


def test_typed_memory_replaces_a_diverging_text_without_touching_the_old_one(tiny_model: Path) -> None:
    loaded = load_model(tiny_model)
    model, eos = loaded.model, loaded.tokenizer.vocab.eos
    a = loaded.tokenizer.encode("The club played in the city").ids
    b = loaded.tokenizer.encode("The club played for the first time").ids
    memory = TypedMemory(entries=2)
    with torch.inference_mode():
        first, _ = memory.features(model, None, a, eos, None)
        copy = first.clone()
        other, _ = memory.features(model, None, b, eos, None)  # shares "The club played": written after it
        fresh = model.features(torch.tensor([[eos, *b]]), None, None)[0][0]
        assert torch.equal(first, copy)
        assert torch.allclose(other, fresh, atol=1e-5)
        for n in range(3):  # more texts than entries: the oldest are forgotten, answers stay right
            text = loaded.tokenizer.encode(f"In {1990 + n} the club").ids
            feats, _ = memory.features(model, None, text, eos, None)
            assert torch.allclose(feats, model.features(torch.tensor([[eos, *text]]), None, None)[0][0], atol=1e-5)
    assert len(memory) == 2


def count_reads(model) -> list[int]:
    """Record how many tokens each call to the model's recurrence reads."""
    seen: list[int] = []
    features = model.features

    def spy(inputs, *args, **kwargs):
        seen.append(inputs.shape[1])
        return features(inputs, *args, **kwargs)
    model.features = spy
    return seen


def test_typed_memory_keeps_many_people_typing_at_once_within_its_bytes(tiny_model: Path) -> None:
    loaded = load_model(tiny_model)
    model, eos = loaded.model, loaded.tokenizer.vocab.eos
    first_words = loaded.tokenizer.vocab.itos[10:50]  # 40 people, each text its own from the first word
    people = [loaded.tokenizer.encode(f"{word} the club played in the city and won the cup").ids
              for word in first_words]
    memory = TypedMemory()
    read = count_reads(model)
    with torch.inference_mode():
        for n in range(1, len(people[0]) + 1):
            for ids in people:  # each keystroke reads its one new token, however many type in between
                memory.features(model, None, ids[:n], eos, None)
    assert read == [2] * len(people) + [1] * (len(people) * (len(people[0]) - 1))
    assert 0 < memory.bytes <= memory.max_bytes
    small = TypedMemory(max_bytes=200_000)
    with torch.inference_mode():
        for ids in people:
            feats, _ = small.features(model, None, ids, eos, None)
            assert small.bytes <= 200_000 and len(small) >= 1
    assert len(small) < len(people)  # the oldest were forgotten to stay within the bytes
    with torch.inference_mode():  # and a forgotten text is read again, right
        feats, _ = small.features(model, None, people[0], eos, None)
        assert torch.allclose(feats, model.features(torch.tensor([[eos, *people[0]]]), None, None)[0][0], atol=1e-5)
