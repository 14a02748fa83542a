"""On a GPU (`pytest -m cuda`; skipped without CUDA): serving, generation, the state cache, evaluation and
training on the device, a model trained there loading on the CPU, and a run resumed on the other device.

`RNNLM_CUDA_TESTS_ON=cpu` runs the same code on the CPU: a dry run of these tests where there is no GPU.
"""
from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import pytest
import torch

from models.checkpoint import LoadedModel, load_model
from models.device import move_state, place_model, resolve_device
from models.engine import Engine, GenerationParams

DEVICE = os.environ.get("RNNLM_CUDA_TESTS_ON", "cuda")
REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA")]

SENTENCES = ["The album was released in 1999 .", "The album were release in 1999 .",
             "He was born in London and moved to Paris in 1920 .",
             "The river flows through the city before it reaches the sea .",
             "In 2005 , the team won the championship for the first time in its history .",
             "The game received positive reviews from critics .", "It was the first game of the series ."]


@pytest.fixture(scope="module")
def device() -> torch.device:
    return resolve_device(DEVICE)


def shipped() -> LoadedModel:
    return load_model(REPO / "checkpoints" / "lstm")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small corpus of the shipped vocabulary's words (Zipf-like), so these tests need no data folder."""
    words = (REPO / "checkpoints" / "lstm" / "vocab.txt").read_text(encoding="utf-8").split("\n")[:3000]
    words = [w for w in words if w and not w.startswith("<")]
    rng = random.Random(7)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    folder = tmp_path_factory.mktemp("gpu-corpus")
    for split, lines in (("train", 1500), ("valid", 150), ("test", 150)):
        text = "\n".join(" " + " ".join(rng.choices(words, weights, k=rng.randint(8, 30))) for _ in range(lines))
        (folder / f"{split}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def tiny(corpus: Path, out: Path, **overrides):
    from models.train import TrainConfig

    settings = dict(data=str(corpus), out=str(out), run_dir=str(out.parent / f"run-{out.name}"), arch="lstm", emb=32,
                    hidden=48, layers=2, epochs=1, batch_size=16, bptt=20, max_vocab=2000, seed=3, dropout=0.2)
    return TrainConfig(**{**settings, **overrides})


# ---- serving ----------------------------------------------------------------------------------------
def test_fp32_scores_on_the_device_match_the_cpu(device):
    cpu = Engine(shipped(), state_cache_bytes=0, device="cpu").score(SENTENCES)
    engine = Engine(shipped(), state_cache_bytes=0, device=device, dtype="float32")
    assert engine.info()["device"] == str(device) and engine.info()["compute_dtype"] == "float32"
    for a, b in zip(engine.score(SENTENCES), cpu):
        assert a.num_tokens == b.num_tokens
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)


def test_half_precision_serving_is_close_and_ranks_the_same(device):
    engine = Engine(shipped(), state_cache_bytes=0, device=device)  # auto: bf16 (or fp16) recurrent layers on CUDA
    if device.type == "cuda":
        assert engine.info()["compute_dtype"] in ("bfloat16", "float16")
        assert next(engine.model.rnn.parameters()).dtype != torch.float32
        assert engine.model.encoder.weight.dtype == torch.float32  # the output side stays fp32
    cpu = Engine(shipped(), state_cache_bytes=0, device="cpu").score(SENTENCES)
    half = engine.score(SENTENCES)
    per_token = [abs(a.logprob - b.logprob) / a.num_tokens for a, b in zip(half, cpu)]
    assert sum(per_token) / len(per_token) < 0.05
    assert half[0].logprob > half[1].logprob  # the grammatical one stays ahead
    words = engine.next_word("He was born in Lon", k=3)
    assert words.predictions[0].word == "London"


def test_generation_and_state_cache_stay_on_the_device(device):
    engine = Engine(shipped(), device=device)
    params = GenerationParams(max_tokens=24, temperature=0.9, top_p=0.9, top_k=100, seed=5, n=3, logprobs=2)
    streamed = list(engine.stream("The river", params, context="Tropical Storm"))
    assert list(engine.stream("The river", params, context="Tropical Storm", chunk=16)) == streamed
    again = engine.generate("The river", params, context="Tropical Storm")
    assert [c.tokens for c in again.choices] == [
        [e.token for e in streamed if e.index == i and e.finish_reason is None] for i in range(3)]
    cached = engine.state_cache.lookup(engine.resolve_context("Tropical Storm").key,
                                       engine.tokenizer.encode("The river").ids)
    assert cached is not None and cached.feature.device.type == device.type
    assert all(s.device.type == device.type for s in cached.state)
    # the same function moves a cached state to the CPU and back, unchanged
    there_and_back = move_state(move_state(cached.state, torch.device("cpu")), device)
    assert all(torch.equal(a, b) for a, b in zip(there_and_back, cached.state))
    greedy = GenerationParams(max_tokens=8, temperature=0)
    assert (
        engine.generate("The game", greedy).choices[0].tokens == engine.generate("The game", greedy).choices[0].tokens
    )


def test_a_model_moves_to_the_device_and_back_unchanged(device):
    loaded = shipped()
    before = copy.deepcopy(loaded.model.state_dict())
    place_model(loaded.model, device)
    assert next(loaded.model.parameters()).device.type == device.type
    place_model(loaded.model, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_evaluation_on_the_device_matches_the_cpu(device, corpus):
    from models.data import load_corpus
    from models.evaluate import evaluate_stream

    loaded = shipped()
    data = load_corpus(corpus, vocab=loaded.tokenizer.vocab, titles=True)
    on_cpu = evaluate_stream(loaded.model, data.valid).perplexity
    place_model(loaded.model, device)
    assert evaluate_stream(loaded.model, data.valid).perplexity == pytest.approx(on_cpu, rel=1e-4)


# ---- training ---------------------------------------------------------------------------------------
def test_trained_on_the_device_loads_and_scores_on_the_cpu(device, corpus, tmp_path):
    from models.checkpoint import read_config
    from models.train import train

    cfg = tiny(corpus, tmp_path / "gpu-trained", device=DEVICE)
    result = train(cfg, progress=False)
    assert result.valid_ppl is not None and result.test_ppl is not None
    meta = read_config(cfg.out)
    assert meta["provenance"]["device"].startswith(device.type)
    engine = Engine(load_model(cfg.out), device="cpu")
    assert engine.score(["the of and"])[0].logprob < 0


@pytest.mark.parametrize("first, then", [(DEVICE, "cpu"), ("cpu", DEVICE)])
def test_a_run_resumed_on_the_other_device_continues(first, then, corpus, tmp_path):
    from models.train import Trainer, train

    out = tmp_path / "resumed"
    train(tiny(corpus, out, device=first, epochs=1), progress=False)
    trainer = Trainer(tiny(corpus, out, device=then, epochs=2), resume=True, progress=False)
    assert trainer.start_epoch == 2
    assert trainer.resumed_on_other_device == (resolve_device(first).type != resolve_device(then).type)
    result = trainer.fit()
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(h["valid_ppl"] < 5000 for h in result.history)


def test_bf16_autocast_training_on_the_device(device, corpus, tmp_path):
    from models.train import Trainer

    trainer = Trainer(tiny(corpus, tmp_path / "amp", device=DEVICE, amp="bf16", context=False), progress=False)
    result = trainer.fit()
    assert result.valid_ppl is not None and result.valid_ppl < 5000
    assert all(p.dtype == torch.float32 and p.device.type == device.type for p in trainer.model.parameters())


def test_distillation_on_the_device(device, corpus, tmp_path):
    from models.distill import distill
    from models.train import train

    teacher = tmp_path / "teacher"
    train(tiny(corpus, teacher, device=DEVICE), progress=False)
    result = distill(tiny(corpus, tmp_path / "student", device=DEVICE, emb=16, hidden=24, layers=1, max_vocab=None),
                     teacher=str(teacher), progress=False)
    assert result.valid_ppl is not None


# ---- the server -------------------------------------------------------------------------------------
def test_the_server_serves_on_the_device(device, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")  # TestClient
    import shutil

    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(REPO / "checkpoints" / "lstm", checkpoints / "lstm")
    with TestClient(create_app(Settings(checkpoints=checkpoints, reload_interval_s=0, device=DEVICE))) as client:
        ready = client.get("/ready").json()
        assert ready["status"] == "ready" and ready["device"] == str(device)
        card = client.get("/v1/models/lstm").json()
        assert card["device"] == str(device)
        scored = client.post("/v1/score", json={"texts": SENTENCES[:2]}).json()["results"]
        assert scored[0]["logprob"] > scored[1]["logprob"]
        assert f'rnnlm_model_device_info{{device="{device}"' in client.get("/metrics").text
