"""The device setting on a CPU-only machine: explicit cpu, auto, the error for a missing cuda, and
models, states and the engine moved through the same code path a GPU uses."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import LoadedModel, load_model
from models.device import (
    DeviceError,
    autocast,
    model_device,
    move_state,
    place_model,
    resolve_device,
    rng_states,
    serve_dtype,
    set_rng_states,
    valid_device,
)
from models.engine import Engine, GenerationParams

REPO = Path(__file__).resolve().parents[2]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    return load_model(tiny_model)


@pytest.fixture(scope="module")
def lstm() -> LoadedModel:
    return load_model(REPO / "checkpoints" / "lstm")


def test_settings_are_checked_by_name():
    for spec in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert valid_device(spec)
    for spec in ("", "gpu", "cuda:", "cuda:x", "mps", "CPU0"):
        assert not valid_device(spec)
    with pytest.raises(DeviceError, match="device must be auto .*cpu, cuda or cuda:N; got 'gpu'"):
        resolve_device("gpu")


def test_explicit_cpu_and_auto_on_a_cpu_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device(None) == torch.device("cpu")
    assert serve_dtype(torch.device("cpu"), "float16") == torch.float32  # fp32 on CPU whatever is asked


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_missing_cuda_is_a_clear_error(spec):
    with pytest.raises(DeviceError) as err:
        resolve_device(spec)
    message = str(err.value)
    assert f"device {spec!r} is not available" in message
    assert "use --device cpu or auto" in message


def test_model_and_state_move_through_the_same_function(loaded):
    model = loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert place_model(model, torch.device("cpu")) is model
    assert model_device(model) == torch.device("cpu") and model.compute_dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    state = model.init_state(3)
    moved = move_state(state, torch.device("cpu"))
    assert isinstance(moved, tuple) and len(moved) == 2
    assert all(m.device.type == "cpu" and m.shape == s.shape for m, s in zip(moved, state))
    assert move_state(None, torch.device("cpu")) is None
    gru_state = torch.zeros(1, 2, 4)
    assert move_state(gru_state, torch.device("cpu"), torch.float64).dtype == torch.float64


def test_recurrent_layers_in_another_precision_keep_fp32_outputs(loaded):
    """What serving on a GPU does (recurrent layers in bf16), exercised on the CPU with a copy."""
    import copy

    model = copy.deepcopy(loaded.model)
    place_model(model, torch.device("cpu"), torch.bfloat16)
    assert next(model.rnn.parameters()).dtype == torch.bfloat16
    assert model.encoder.weight.dtype == torch.float32
    ids = torch.tensor([[loaded.tokenizer.vocab.eos, 5, 6, 7, 8, 9]])
    feats, state = model.features(ids)
    assert feats.dtype == torch.float32 and state[0].dtype == torch.bfloat16
    reference, _ = loaded.model.features(ids)
    assert torch.allclose(feats, reference, atol=0.05)
    more, _ = model.features(ids[:, :2], state)  # a state from a previous call goes back in
    assert more.dtype == torch.float32


def test_rng_states_round_trip_on_cpu():
    saved = rng_states(torch.device("cpu"))
    assert saved["cuda_rng"] is None
    first = torch.rand(4)
    assert set_rng_states(saved, torch.device("cpu")) is True
    assert torch.equal(torch.rand(4), first)


def test_bf16_autocast_context():
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ w).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "none"):
        assert (x @ w).dtype == torch.float32


# ---- the engine -------------------------------------------------------------------------------------
def test_engine_on_cpu_scores_as_before(lstm):
    """The shipped lstm's scores, with the device given explicitly and not."""
    texts = ["The album was released in 1999 .", "The album were release in 1999 ."]
    for engine in (Engine(lstm, state_cache_bytes=0), Engine(lstm, state_cache_bytes=0, device="cpu")):
        assert engine.device == torch.device("cpu")
        assert engine.info()["device"] == "cpu" and engine.info()["compute_dtype"] == "float32"
        scores = engine.score(texts)
        assert [round(s.logprob, 4) for s in scores] == [-24.1369, -33.0515]
        words = engine.next_word("He was born in Lon", k=3)
        assert [(p.word, round(p.prob, 4)) for p in words.predictions] == [
            ("London", 0.9843), ("Long", 0.014), ("Lone", 0.001)]
    auto = Engine(lstm, state_cache_bytes=0, device="auto")
    if not torch.cuda.is_available():
        assert auto.device == torch.device("cpu")


@no_cuda
def test_engine_refuses_missing_cuda(loaded):
    with pytest.raises(DeviceError, match="not available"):
        Engine(loaded, device="cuda")


def test_state_cache_holds_states_on_the_engines_device(loaded):
    engine = Engine(loaded, device="cpu")
    engine.next_word("The game was released in", k=2)
    cached = engine.state_cache.lookup(None, engine.tokenizer.encode("The game was released in").ids)
    assert cached is not None
    assert cached.feature.device == engine.device
    assert all(s.device == engine.device for s in cached.state)


@pytest.mark.parametrize("params", [
    GenerationParams(max_tokens=40, temperature=0.9, top_p=0.9, seed=3, n=3, stop=[" the "]),
    GenerationParams(max_tokens=23, temperature=1.2, top_k=50, seed=11, n=2, logprobs=2),
    GenerationParams(max_tokens=5, temperature=0, n=1),
])
def test_generation_in_chunks_equals_token_by_token(loaded, params):
    """Sampling stays on the device and comes back in chunks: the same choices as one token at a time."""
    engine = Engine(loaded, device="cpu")
    events = list(engine.stream("The river", params, context="Tropical Storm"))
    for chunk in (4, 16, 64):
        assert list(engine.stream("The river", params, context="Tropical Storm", chunk=chunk)) == events
    generated = engine.generate("The river", params, context="Tropical Storm")
    finals = {e.index: e for e in events if e.finish_reason is not None}
    for choice in generated.choices:
        assert choice.text == finals[choice.index].text
        assert choice.finish_reason == finals[choice.index].finish_reason
        assert choice.tokens == [e.token for e in events if e.index == choice.index and e.finish_reason is None]


# ---- training ---------------------------------------------------------------------------------------
def _tiny_config(corpus: Path, out: Path, **overrides):
    from models.train import TrainConfig

    settings = dict(data=str(corpus), out=str(out), run_dir=str(out.parent / f"run-{out.name}"), arch="lstm", emb=16,
                    hidden=24, layers=1, epochs=1, batch_size=16, bptt=20, max_vocab=2000, train_tokens=20000,
                    valid_tokens=3000, seed=5)
    return TrainConfig(**{**settings, **overrides})


def test_training_on_cpu_records_its_device_and_rng_states(tiny_corpus, tmp_path):
    from models.checkpoint import read_config
    from models.train import train

    cfg = _tiny_config(tiny_corpus, tmp_path / "cpu", device="cpu")
    train(cfg, progress=False)
    prov = read_config(cfg.out)["provenance"]
    assert prov["device"] == "cpu"
    assert prov["train_config"]["device"] == "cpu" and prov["train_config"]["amp"] == "none"
    saved = torch.load(Path(cfg.run_dir) / "state.pt", weights_only=True)
    assert saved["rng"].dtype == torch.uint8 and saved["cuda_rng"] is None


def test_auto_trains_like_cpu_on_a_cpu_machine(tiny_corpus, tmp_path):
    """`auto` on a CPU-only machine is the CPU: the same weights, bit for bit."""
    from models.train import train

    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    a = _tiny_config(tiny_corpus, tmp_path / "auto", device="auto")
    b = _tiny_config(tiny_corpus, tmp_path / "cpu", device="cpu")
    train(a, progress=False)
    train(b, progress=False)
    wa, wb = load_model(a.out).model.state_dict(), load_model(b.out).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bf16_autocast_trains_with_an_fp32_loss(tiny_corpus, tmp_path):
    from models.train import Trainer

    cfg = _tiny_config(tiny_corpus, tmp_path / "amp", device="cpu", amp="bf16", context=True)
    trainer = Trainer(cfg, progress=False)
    losses = []
    trainer.on_epoch = lambda report: losses.append(report.loss)
    result = trainer.fit()
    assert len(losses) == 1 and 0 < losses[0] < 20
    assert result.valid_ppl is not None and result.valid_ppl < 2000
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights stay fp32
    folder = load_model(cfg.out)
    assert Engine(folder).score(["The game was released ."])[0].logprob < 0


@no_cuda
@pytest.mark.parametrize("command", ["train", "distill", "eval", "generate"])
def test_cli_reports_a_missing_gpu_and_writes_nothing(command, tiny_model, tiny_corpus, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "never"
    args = {"train": ["--data", str(tiny_corpus), "--out", str(out)],
            "distill": ["--teacher", str(tiny_model), "--data", str(tiny_corpus), "--out", str(out)],
            "eval": ["--model", str(tiny_model), "--data", str(tiny_corpus)],
            "generate": ["--model", str(tiny_model), "--prompt", "The"]}[command]
    proc = subprocess.run([sys.executable, "-m", "models.cli", command, *args, "--device", "cuda"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"rnnlm {command}: error: device 'cuda' is not available")
    assert not out.exists()


def test_eval_on_an_explicit_cpu_equals_the_default(tiny_model, tiny_corpus):
    import json
    import subprocess
    import sys

    runs = [json.loads(subprocess.run([sys.executable, "-m", "models.cli", "eval", "--model", str(tiny_model),
                                       "--data", str(tiny_corpus), "--lines", "40", "--json", *flags],
                                      capture_output=True, text=True, timeout=300, cwd=REPO, check=True).stdout)
            for flags in ([], ["--device", "cpu"])]
    assert runs[1]["device"] == "cpu"
    if not torch.cuda.is_available():
        assert runs[0]["device"] == "cpu"
        assert runs[0]["perplexity"] == runs[1]["perplexity"] and runs[0]["nll"] == runs[1]["nll"]
