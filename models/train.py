"""The trainer: teacher forcing, truncated BPTT, clipping, LR schedule, early stopping, resume.

Run state (model, optimiser, scheduler, RNG, history) is saved after every epoch in `run_dir`,
so a killed run continues from its last finished epoch and ends with the same weights as an
unbroken one. The best model by validation perplexity is written to `out` as a model folder.
From epoch `average_from` on, the weights are also averaged over every step (Polyak averaging,
as in ASGD and SWA), and validation, early stopping and the written model use the average.
`init` starts a new run (fresh optimiser and schedule) from the weights, architecture and
vocabulary of an existing model folder, e.g. to train a finished model further.
Under `torchrun` each step runs in torch's DistributedDataParallel (see models.distributed).
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from models.checkpoint import LoadedModel, load_model, read_config, save_model
from models.config import TrainConfig
from models.data import Corpus, load_corpus
from models.device import autocast, describe, place_model, resolve_device, rng_states, set_rng_states
from models.distributed import World
from models.errors import CheckpointError, DataError, TrainingCancelled
from models.evaluate import evaluate_stream, fit_context_boost
from models.objective import Batches, CrossEntropy, Objective, TrainStep, title_context
from models.rnnlm import RNNLM, ModelConfig, detach_state
from models.tokenizer import Tokenizer, Vocab

__all__ = ["TrainConfig", "Trainer", "train", "finalize", "fit_boost", "StepReport", "EpochReport", "TrainResult",
           "Batches", "Objective", "CrossEntropy", "title_context"]

REPORT_EVERY_S = 2.0  # seconds between step reports within an epoch


@dataclass
class StepReport:
    """Progress within an epoch (the `on_step` callback): where the run is, how fast, how long to go."""
    epoch: int              # the epoch in progress
    epochs: int
    step: int               # optimiser steps of the whole run so far
    total_steps: int        # steps of the whole run (epochs x steps per epoch)
    epoch_step: int
    epoch_steps: int
    loss: float             # running mean training loss of this epoch (nats per token)
    tokens_per_s: float     # this epoch so far, all ranks together
    eta_s: float            # estimated training seconds to the end of the last epoch
    lr: float
    start_epoch: int        # first epoch of this attempt (> 1: resumed)


@dataclass
class EpochReport:
    """What the per-epoch callback receives (the worker turns it into job progress)."""
    epoch: int
    epochs: int
    step: int
    loss: float
    valid_ppl: float | None
    best_valid_ppl: float | None
    tokens_per_s: float
    eta_s: float
    lr: float
    improved: bool
    total_steps: int = 0
    start_epoch: int = 1
    history: list[dict] | None = None  # every finished epoch of the run: epoch, steps, train_loss, valid_ppl, ...


@dataclass
class TrainResult:
    out: Path
    epochs_run: int
    seconds: float
    valid_ppl: float | None
    test_ppl: float | None
    parameters: int
    history: list[dict]


def _atomic_torch_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _make_optimizer(cfg: TrainConfig, model: RNNLM) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    return None


class Trainer:
    """One training run: set up (or restore) the model, optimiser and schedule, then epoch by epoch
    train, validate, keep the best weights and save the run state; `fit` runs it to the end."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 on_epoch: Callable[[EpochReport], None] | None = None,
                 on_step: Callable[[StepReport], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, progress: bool = True,
                 objective: Objective | None = None, vocab: Vocab | None = None,
                 provenance: dict | None = None, report_every_s: float = REPORT_EVERY_S) -> None:
        self.out = Path(cfg.out)
        self.run_dir = cfg.resolved_run_dir()
        self.state_path = self.run_dir / "state.pt"
        self.resume = resume and self.state_path.exists()  # nothing to resume: start fresh (the worker always asks)
        if self.out.exists() and not (self.resume or overwrite):
            raise CheckpointError(f"{self.out} already exists; pass --overwrite to replace it or --resume to continue")
        self.on_epoch, self.on_step, self.should_stop = on_epoch, on_step, should_stop
        self.report_every_s = report_every_s
        self.objective = objective or CrossEntropy()
        self.provenance = dict(provenance or {})
        self.device = resolve_device(cfg.device)  # a missing GPU fails here, before any data is read
        if cfg.init and cfg.extend_vocab:  # adapt with new words: start from the base model extended by them
            from models.adapt import extended_init
            cfg = replace(cfg, init=str(extended_init(cfg, self.run_dir)))
        base = load_model(cfg.init) if cfg.init else None
        if base is not None:
            if vocab is not None and vocab.itos != base.tokenizer.vocab.itos:
                raise CheckpointError(f"{cfg.init} has a different vocabulary from the one this run must use")
            vocab = base.tokenizer.vocab
            cfg = cfg.adopt(base.config, base.tokenizer.style)
            self.provenance["init"] = _init_record(base)
            if cfg.extend_vocab:  # what the extended start added to the base model's vocabulary
                self.provenance["vocab_extension"] = base.meta.get("provenance", {}).get("vocab_extension")
        self.cfg = cfg
        self.corpus = load_corpus(cfg.data, vocab=vocab, max_vocab=cfg.max_vocab,
                                  titles=cfg.context or self.objective.titles,
                                  train_tokens=cfg.train_tokens, valid_tokens=cfg.valid_tokens)
        self.tokenizer = Tokenizer(self.corpus.vocab, cfg.style)
        self.world = World.from_env()
        if self.device.type == "cuda" and self.world.size > 1 and ":" not in cfg.device:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per rank
        self.provenance["device"] = describe(self.device)
        self.resumed_on_other_device = False
        torch.manual_seed(cfg.seed)
        if base is None:
            self.model = RNNLM(cfg.model_config(len(self.corpus.vocab)))  # the same initial weights on every rank
        else:
            # the boost is refitted for the new weights in `fit_boost`
            self.model = RNNLM(replace(base.config, dropout=cfg.dropout, context_dropout=cfg.context_dropout,
                                       context_boost=[]))
            self.model.load_state_dict({k: v.float() for k, v in base.model.state_dict().items()})
        place_model(self.model, self.device)  # fp32 weights; --amp bf16 autocasts the forward pass
        self.opt = _make_optimizer(cfg, self.model)
        self.sched = _make_scheduler(cfg, self.opt)
        self.batches = Batches(self.corpus.train, cfg.batch_size, cfg.bptt, self.world)
        # the whole (batchified) training stream lives on the device: a window is a slice of it
        self.batches.ids, self.batches.titles = self.batches.ids.to(self.device), self.batches.titles.to(self.device)
        self.batches.table = tuple(t.to(self.device) for t in self.batches.table)
        self.progress = progress and self.world.main
        self.start_epoch, self.best, self.bad_epochs, self.seconds = 1, math.inf, 0, 0.0
        self.history: list[dict] = []
        self.best_state: dict | None = None
        self.averaged: AveragedModel | None = None
        if self.resume:
            self.restore()
        if self.world.size > 1:
            torch.manual_seed(cfg.seed + 1000 * self.start_epoch + self.world.rank)  # different dropout per rank
        step = TrainStep(self.model, self.objective, self.batches.table, cfg.context_dropout if cfg.context else 0.0)
        # an adaptive tail with no target in a window gets no gradient: DDP must look for unused parameters
        self.step_fn = self.world.wrap(step, find_unused_parameters=self.model.config.adaptive)
        self.step = sum(h["steps"] for h in self.history)
        self.stopped_early = self.bad_epochs >= cfg.patience

    # ---- run state ----------------------------------------------------------------------------
    def restore(self) -> None:
        """Continue from the run state of the last finished epoch."""
        # tensors come back on the CPU and load into the model, optimiser and averager wherever they are
        saved = torch.load(self.state_path, weights_only=True, map_location="cpu")
        # through ModelConfig, so a field added since (at its default) does not break a resume
        if ModelConfig.from_dict(saved["model_config"]) != self.model.config:
            raise CheckpointError(f"run state in {self.run_dir} was made with a different model configuration")
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        if self.sched is not None and saved.get("scheduler"):
            self.sched.load_state_dict(saved["scheduler"])
        # saved on another kind of device: dropout continues from another generator (see README)
        self.resumed_on_other_device = not set_rng_states(saved, self.device)
        self.start_epoch, self.best, self.bad_epochs = saved["epoch"] + 1, saved["best"], saved["bad_epochs"]
        self.history, self.seconds = saved["history"], saved["seconds"]
        if saved.get("init") is not None:  # the start as it was: the --init folder may have changed since
            self.provenance["init"] = saved["init"]
        self.best_state = saved.get("best_model")
        if saved.get("averaged") is not None:
            self.averaged = AveragedModel(self.model)
            self.averaged.load_state_dict(saved["averaged"])

    def save_state(self, epoch: int) -> None:
        _atomic_torch_save({
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None, **rng_states(self.device),
            "best": self.best, "bad_epochs": self.bad_epochs, "history": self.history, "seconds": self.seconds,
            "best_model": self.best_state, "model_config": self.model.config.to_dict(),
            "averaged": self.averaged.state_dict() if self.averaged is not None else None,
            "init": self.provenance.get("init"),
        }, self.state_path)

    # ---- epochs -------------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * len(self.batches)

    def run_epoch(self, epoch: int) -> tuple[float, int, float]:
        """Train one epoch; returns (mean loss, steps, seconds)."""
        cfg, model, batches = self.cfg, self.model, self.batches
        t0 = last_report = time.perf_counter()
        model.train()
        if self.averaged is None and cfg.average_from is not None and epoch >= cfg.average_from:
            self.averaged = AveragedModel(model)
        state = model.init_state(cfg.batch_size)
        self.objective.start_epoch(batches)
        # the loss is summed on the device and read back only for reports: no host round trip per step
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        n_steps, tokens, epoch_steps = 0, 0, len(batches)
        bar = tqdm(total=batches.tokens, unit="tok", unit_scale=True, desc=f"epoch {epoch}/{cfg.epochs}",
                   disable=not self.progress, mininterval=1.0, leave=False)
        for inputs, targets, titles in batches:
            if self.should_stop is not None and self.should_stop():
                bar.close()
                raise TrainingCancelled(f"stopped during epoch {epoch}")
            with autocast(self.device, cfg.amp):
                loss, state = self.step_fn(inputs, detach_state(state), targets, titles)
            loss = loss.float()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the ranks here
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            self.opt.step()
            if self.averaged is not None:
                self.averaged.update_parameters(model)
            total_loss += loss.detach()
            n_steps += 1
            self.step += 1
            tokens += inputs.numel()
            bar.update(inputs.numel())
            if n_steps % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", ppl=f"{math.exp(min(loss.item(), 50)):.1f}")
            now = time.perf_counter()
            if self.on_step is not None and (n_steps == 1 or now - last_report >= self.report_every_s):
                last_report = now
                tokens_per_s = self.world.size * tokens / max(now - t0, 1e-9)
                steps_left = (epoch_steps - n_steps) + (cfg.epochs - epoch) * epoch_steps
                self.on_step(StepReport(epoch, cfg.epochs, self.step, self.total_steps, n_steps, epoch_steps,
                                        total_loss.item() / n_steps, tokens_per_s, steps_left * (now - t0) / n_steps,
                                        self.lr, self.start_epoch))
        bar.close()
        return total_loss.item() / max(n_steps, 1), n_steps, time.perf_counter() - t0

    def end_epoch(self, epoch: int, train_loss: float, n_steps: int, t0: float) -> tuple[float | None, bool]:
        """Validate, keep the best weights, step the schedule, record history; (valid ppl, improved)."""
        valid_ppl = None
        current = self.averaged.module if self.averaged is not None else self.model
        if self.corpus.valid is not None:
            valid_ppl = evaluate_stream(current, self.corpus.valid, use_context=self.cfg.context).perplexity
        metric = valid_ppl if valid_ppl is not None else math.exp(train_loss)
        improved = metric < self.best
        if improved:
            self.best, self.bad_epochs = metric, 0
            best = current.state_dict()
            self.best_state = (
                copy.deepcopy(best) if self.device.type == "cpu" else {k: v.cpu() for k, v in best.items()}
            )
        else:
            self.bad_epochs += 1
        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step(metric)
        elif self.sched is not None:
            self.sched.step()
        self.seconds += time.perf_counter() - t0
        self.history.append({"epoch": epoch, "steps": n_steps, "train_loss": train_loss, "valid_ppl": valid_ppl,
                             "seconds": round(time.perf_counter() - t0, 2), "lr": self.lr})
        self.stopped_early = self.bad_epochs >= self.cfg.patience
        return valid_ppl, improved

    def fit(self) -> TrainResult:
        """Train from the start (or the restored epoch) to the last epoch or early stop, then finalise."""
        cfg, world = self.cfg, self.world
        self.run_dir.mkdir(parents=True, exist_ok=True)
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            if self.stopped_early:
                epoch -= 1
                break
            t0 = time.perf_counter()
            train_loss, n_steps, train_seconds = self.run_epoch(epoch)
            valid_ppl, improved = self.end_epoch(epoch, train_loss, n_steps, t0)
            if world.main:
                if improved:
                    _write_model(self.model, self.best_state, self.tokenizer, self.out, cfg, self.corpus,
                                 self.history, self.seconds, self.provenance)
                self.save_state(epoch)
            world.barrier()
            self._report_epoch(epoch, train_loss, valid_ppl, improved, train_seconds, time.perf_counter() - t0)
        if self.best_state is None:
            raise DataError("training produced no model (no epoch finished)")
        if not world.main:
            world.barrier()  # rank 0 finalises the model folder
            return TrainResult(self.out, epoch, self.seconds, self.best, None, self.model.num_parameters(),
                               self.history)
        loaded = load_model(self.out)
        place_model(loaded.model, self.device)  # the boost and the final perplexities on the training device
        fit_boost(loaded, self.corpus)
        test_ppl = finalize(self.out, self.corpus, loaded)
        world.barrier()
        meta = read_config(self.out)
        return TrainResult(self.out, epoch, self.seconds, meta["metrics"].get("valid_ppl"), test_ppl,
                           meta["parameters"], self.history)

    def _report_epoch(self, epoch: int, train_loss: float, valid_ppl: float | None, improved: bool,
                      train_seconds: float, epoch_seconds: float) -> None:
        tokens_per_s = self.world.size * self.batches.tokens / max(train_seconds, 1e-9)
        remaining = 0 if self.stopped_early else self.cfg.epochs - epoch
        if self.progress:
            vp = f"{valid_ppl:.2f}" if valid_ppl is not None else "n/a"
            tqdm.write(f"epoch {epoch}/{self.cfg.epochs}: train loss {train_loss:.3f}, valid ppl {vp}, "
                       f"{tokens_per_s:,.0f} tok/s, lr {self.lr:.2g}" + (" (best)" if improved else ""))
        if self.on_epoch is not None:
            self.on_epoch(EpochReport(epoch, self.cfg.epochs, self.step, train_loss, valid_ppl,
                                      self.best if math.isfinite(self.best) else None, tokens_per_s,
                                      remaining * epoch_seconds, self.lr, improved, self.total_steps,
                                      self.start_epoch, list(self.history)))


def train(cfg: TrainConfig, **kwargs) -> TrainResult:
    """Train a model from `cfg` (see `Trainer` for the keyword arguments). `objective` replaces the
    cross-entropy (distillation uses it); `vocab` fixes the vocabulary instead of building it."""
    return Trainer(cfg, **kwargs).fit()


def _init_record(base) -> dict:
    """What a warm-started model says about the model it started from."""
    prov, metrics = base.meta.get("provenance", {}), base.meta.get("metrics", {})
    record = {"name": base.name, "path": str(base.path), "epochs": prov.get("epochs"),
              "seconds": prov.get("seconds"), "valid_ppl": metrics.get("valid_ppl")}
    if "init" in prov:
        record["init"] = prov["init"]
    return record


def _write_model(model: RNNLM, best_state: dict, tokenizer: Tokenizer, out: Path, cfg: TrainConfig,
                 corpus: Corpus, history: list[dict], seconds: float, provenance: dict | None) -> None:
    snapshot = RNNLM(model.config)
    snapshot.load_state_dict(best_state)
    best = min((h for h in history if h["valid_ppl"] is not None), key=lambda h: h["valid_ppl"], default=None)
    meta = {
        "provenance": {
            "corpus": str(corpus.train_path.parent.name), "train_file": corpus.train_path.name,
            "corpus_sha256": corpus.train_sha256, "epochs": len(history),
            "best_epoch": best["epoch"] if best else len(history), "seconds": round(seconds, 1),
            "seed": cfg.seed,
            "train_config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "run_dir", "init")},
            "torch": torch.__version__, **(provenance or {}),
        },
        "metrics": {"valid_ppl": best["valid_ppl"] if best else None, "parameters": snapshot.num_parameters()},
        "history": history,
    }
    save_model(snapshot, tokenizer, out, meta, dtype=getattr(torch, cfg.save_dtype))


def fit_boost(loaded: LoadedModel, corpus: Corpus) -> list[float]:
    """Fit a context model's title-word boost on the validation split (a few numbers, see
    `fit_context_boost`), in `loaded`'s config; `finalize` then measures and stores it."""
    if loaded.config.context and corpus.valid is not None:
        loaded.config.context_boost = fit_context_boost(loaded.model, corpus.valid)
    return loaded.config.context_boost


def finalize(out: Path, corpus: Corpus, loaded: LoadedModel | None = None) -> float | None:
    """Re-measure the model (as stored, e.g. fp16, with the boost it has) on valid/test and write it
    with these figures to `out`. `loaded` is the model as loaded from `out`, when the caller has it."""
    loaded = loaded or load_model(out)
    meta = loaded.meta
    metrics = meta.setdefault("metrics", {})
    metrics.pop("fingerprint", None)  # recorded for the model as it was; re-record with `rnnlm eval --record`
    use_ctx = loaded.config.context
    if corpus.valid is not None:
        metrics["valid_ppl"] = round(evaluate_stream(loaded.model, corpus.valid, use_context=use_ctx).perplexity, 4)
    test_ppl = None
    if corpus.test is not None:
        test_ppl = evaluate_stream(loaded.model, corpus.test, use_context=use_ctx).perplexity
        metrics["test_ppl"] = round(test_ppl, 4)
        if use_ctx:
            metrics["test_ppl_no_context"] = round(
                evaluate_stream(loaded.model, corpus.test, use_context=False).perplexity, 4)
    extra = {k: v for k, v in meta.items() if k not in ("format", "name", "model", "dtype", "parameters", "tokenizer")}
    save_model(loaded.model, loaded.tokenizer, out, extra, dtype=getattr(torch, meta.get("dtype", "float32")))
    return test_ppl
