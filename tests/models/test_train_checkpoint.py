"""The trainer and checkpoints: learning, save/load, resume after a kill."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from models.checkpoint import load_model, save_model
from models.engine import Engine
from models.errors import CheckpointError, TrainingCancelled
from models.train import TrainConfig, train

SENTENCES = ["The game was released in Japan .", "It was the first album of the band ."]


def small_config(corpus, out, **kw) -> TrainConfig:
    base = dict(data=str(corpus), out=str(out), arch="lstm", emb=24, hidden=32, layers=1, epochs=2,
                batch_size=16, bptt=20, max_vocab=2000, seed=3, train_tokens=15000, valid_tokens=4000,
                run_dir=str(out) + ".run")
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_validation_perplexity_clearly(tiny_model):
    meta = json.loads((tiny_model / "config.json").read_text())
    history = meta["history"]
    assert len(history) == 2
    first, last = history[0]["valid_ppl"], history[-1]["valid_ppl"]
    # an untrained 3000-word model sits near 3000; a few hundred steps must get well below
    assert last < 0.5 * 3000 and last < first
    assert meta["metrics"]["test_ppl"] > 1 and meta["provenance"]["corpus_sha256"]


def test_save_then_load_gives_identical_scores(tiny_model, tmp_path):
    loaded = load_model(tiny_model)
    before = [s.logprob for s in Engine(loaded).score(SENTENCES, context="Robert Boulter")]
    again = load_model(save_model(loaded.model, loaded.tokenizer, tmp_path / "copy", {"metrics": {}}))
    after = [s.logprob for s in Engine(again).score(SENTENCES, context="Robert Boulter")]
    assert after == pytest.approx(before, abs=1e-5)


def test_fp16_checkpoint_is_half_size_and_computes_in_fp32(tiny_model, tmp_path):
    loaded = load_model(tiny_model)
    half = save_model(loaded.model, loaded.tokenizer, tmp_path / "half", {}, dtype=torch.float16)
    tensors = load_file(str(half / "model.safetensors"))
    assert all(t.dtype == torch.float16 for t in tensors.values())
    reloaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in reloaded.model.parameters())
    a = Engine(loaded).score(SENTENCES)[0].logprob
    b = Engine(reloaded).score(SENTENCES)[0].logprob
    assert b == pytest.approx(a, rel=1e-2)


def test_killed_then_resumed_run_equals_unbroken_run(tiny_corpus, tmp_path):
    unbroken = train(small_config(tiny_corpus, tmp_path / "a", epochs=3), progress=False)

    def kill_after_first_epoch(report):
        if report.epoch == 1:
            raise KeyboardInterrupt  # what a SIGINT does between epochs
    with pytest.raises(KeyboardInterrupt):
        train(small_config(tiny_corpus, tmp_path / "b", epochs=3), on_epoch=kill_after_first_epoch, progress=False)
    resumed = train(small_config(tiny_corpus, tmp_path / "b", epochs=3), resume=True, progress=False)
    assert resumed.epochs_run == unbroken.epochs_run == 3
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.valid_ppl == pytest.approx(unbroken.valid_ppl, rel=1e-9)


def test_resume_accepts_run_state_from_before_a_new_model_field_and_refuses_another_model(tiny_corpus, tmp_path):
    train(small_config(tiny_corpus, tmp_path / "r", epochs=1), progress=False)
    state_path = tmp_path / "r.run" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["model_config"]["context_boost"]  # as written before the field existed
    torch.save(state, state_path)
    resumed = train(small_config(tiny_corpus, tmp_path / "r", epochs=2), resume=True, progress=False)
    assert resumed.epochs_run == 2
    with pytest.raises(CheckpointError, match="different model configuration"):
        train(small_config(tiny_corpus, tmp_path / "r", epochs=3, hidden=40), resume=True, progress=False)


def test_same_seed_same_model_and_cancellation(tiny_corpus, tmp_path):
    calls = iter(range(10**6))
    with pytest.raises(TrainingCancelled):
        train(small_config(tiny_corpus, tmp_path / "c"), should_stop=lambda: next(calls) >= 5, progress=False)
    assert not (tmp_path / "c").exists()  # nothing half-written


def test_refuses_to_overwrite_an_existing_model(tiny_model, tiny_corpus):
    before = (tiny_model / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already exists"):
        train(small_config(tiny_corpus, tiny_model, run_dir=str(tiny_model) + ".other"), progress=False)
    assert (tiny_model / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("arch", ["gru", "rnn"])
def test_other_architectures_train(tiny_corpus, tmp_path, arch):
    result = train(small_config(tiny_corpus, tmp_path / arch, arch=arch, epochs=1, adaptive=False, tie=True,
                                emb=32), progress=False)
    assert load_model(result.out).config.arch == arch and result.valid_ppl < 2000


@pytest.mark.parametrize("breakage", ["no_config", "bad_json", "no_weights", "truncated_weights", "wrong_shape"])
def test_broken_model_folders_raise_checkpoint_error(tiny_model, tmp_path, breakage):
    import shutil
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model, folder)
    if breakage == "no_config":
        (folder / "config.json").unlink()
    elif breakage == "bad_json":
        (folder / "config.json").write_text("{not json")
    elif breakage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif breakage == "truncated_weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif breakage == "wrong_shape":
        meta = json.loads((folder / "config.json").read_text())
        meta["model"]["hidden"] += 1
        (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError):
        load_model(folder)


def test_init_continues_from_a_model_folder(tiny_model, tiny_corpus, tmp_path):
    base = load_model(tiny_model)
    base_meta = json.loads((tiny_model / "config.json").read_text())
    # architecture flags that disagree with the folder are replaced by the folder's
    cfg = small_config(tiny_corpus, tmp_path / "more", init=str(tiny_model), emb=8, hidden=8, max_vocab=None,
                       train_tokens=None, valid_tokens=None, epochs=1, lr=1e-9)
    result = train(cfg, progress=False)
    more = load_model(result.out)
    assert more.config.to_dict() == base.config.to_dict()
    assert more.tokenizer.vocab.itos == base.tokenizer.vocab.itos
    # with a vanishing learning rate the weights are the folder's: the same validation perplexity
    assert result.valid_ppl == pytest.approx(base_meta["metrics"]["valid_ppl"], rel=1e-3)
    prov = json.loads((result.out / "config.json").read_text())["provenance"]
    assert prov["init"]["name"] == "tiny" and prov["init"]["epochs"] == 2
    assert prov["train_config"]["hidden"] == base.config.hidden


def test_resumed_run_records_the_start_it_was_begun_from(tiny_model, tiny_corpus, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    cfg = small_config(tiny_corpus, tmp_path / "more", init=str(base), max_vocab=None, train_tokens=None,
                       valid_tokens=None, epochs=2)

    def kill_after_first_epoch(report):
        if report.epoch == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_epoch=kill_after_first_epoch, progress=False)
    # the --init folder changes before the resume (e.g. the run's own output was written over it)
    meta = json.loads((base / "config.json").read_text())
    meta["provenance"]["epochs"] = 99
    (base / "config.json").write_text(json.dumps(meta))
    train(cfg, resume=True, progress=False)
    prov = json.loads((tmp_path / "more" / "config.json").read_text())["provenance"]
    assert prov["epochs"] == 2 and prov["init"]["epochs"] == 2


def test_init_learns_faster_than_a_fresh_start(tiny_model, tiny_corpus, tmp_path):
    fresh = train(small_config(tiny_corpus, tmp_path / "fresh", emb=32, hidden=48, max_vocab=3000, context=True,
                               train_tokens=None, valid_tokens=None, epochs=1), progress=False)
    warm = train(small_config(tiny_corpus, tmp_path / "warm", init=str(tiny_model), train_tokens=None,
                              valid_tokens=None, max_vocab=None, epochs=1), progress=False)
    assert warm.valid_ppl < fresh.valid_ppl


def test_weight_averaging_validates_and_writes_the_average(tiny_corpus, tmp_path):
    cfg = small_config(tiny_corpus, tmp_path / "avg", epochs=2, average_from=2, optimizer="sgd", lr=5.0,
                       schedule="none")
    result = train(cfg, progress=False)
    state = torch.load(tmp_path / "avg.run" / "state.pt", weights_only=True)
    history = state["history"]
    assert int(state["averaged"]["n_averaged"]) == history[1]["steps"]  # every step of epoch 2, none of epoch 1
    written = load_file(str(result.out / "model.safetensors"))
    raw = state["model"]
    assert all(torch.equal(written[k], state["averaged"]["module." + k]) for k in written)
    assert any(not torch.equal(written[k], raw[k]) for k in written)
    meta = json.loads((result.out / "config.json").read_text())
    assert meta["metrics"]["valid_ppl"] == pytest.approx(history[1]["valid_ppl"], rel=1e-4)


def test_averaging_run_resumes_to_the_same_weights(tiny_corpus, tmp_path):
    def config(name):
        return small_config(tiny_corpus, tmp_path / name, epochs=3, average_from=2)
    train(config("a"), progress=False)

    def kill_after_second_epoch(report):
        if report.epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(config("b"), on_epoch=kill_after_second_epoch, progress=False)
    train(config("b"), resume=True, progress=False)
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_reports_progress_within_epochs(tiny_corpus, tmp_path):
    from models.train import Trainer
    steps, epochs = [], []
    trainer = Trainer(small_config(tiny_corpus, tmp_path / "m", epochs=2), progress=False, report_every_s=0,
                      on_step=steps.append, on_epoch=epochs.append)
    result = trainer.fit()
    per_epoch = len(trainer.batches)
    assert len(steps) == 2 * per_epoch  # report_every_s=0: every step
    assert [s.step for s in steps] == list(range(1, 2 * per_epoch + 1))
    assert {s.total_steps for s in steps} == {2 * per_epoch} and steps[0].epoch_steps == per_epoch
    assert steps[0].epoch == 1 and steps[0].epoch_step == 1 and steps[-1].epoch == 2
    assert all(s.loss > 0 and s.tokens_per_s > 0 and s.eta_s >= 0 for s in steps)
    assert steps[-1].eta_s == 0 and steps[0].eta_s > steps[per_epoch].eta_s
    assert [e.epoch for e in epochs] == [1, 2] and epochs[-1].step == 2 * per_epoch
    assert [h["epoch"] for h in epochs[-1].history] == [1, 2] == [h["epoch"] for h in result.history]


def test_step_reports_are_throttled(tiny_corpus, tmp_path):
    from models.train import Trainer
    steps = []
    Trainer(small_config(tiny_corpus, tmp_path / "m", epochs=1), progress=False, report_every_s=3600,
            on_step=steps.append).fit()
    assert [s.epoch_step for s in steps] == [1]  # the first step at once, then once an hour
