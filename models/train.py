"""The trainer: teacher forcing, truncated BPTT, clipping, LR schedule, early stopping, resume.

Run state (model, optimiser, scheduler, RNG, history) is saved after every epoch in `run_dir`,
so a killed run continues from its last finished epoch and ends with the same weights as an
unbroken one. The best model by validation perplexity is written to `out` as a model folder.
From epoch `average_from` on, the weights are also averaged over every step (Polyak averaging,
as in ASGD and SWA), and validation, early stopping and the written model use the average.
`init` starts a new run (fresh optimiser and schedule) from the weights, architecture and
vocabulary of an existing model folder, e.g. to train a finished model further.
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from models.checkpoint import LoadedModel, load_model, read_config, save_model
from models.data import Corpus, Stream, batchify, load_corpus, num_windows, tbptt_windows
from models.errors import CheckpointError, DataError, TrainingCancelled
from models.distributed import World
from models.evaluate import evaluate_stream, fit_context_boost
from models.rnnlm import RNNLM, ModelConfig, detach_state
from models.tokenizer import Tokenizer, Vocab

SCHEDULES = ("plateau", "cosine", "none")
OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "lstm"
    emb: int = 256
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.3
    tie: bool = False
    adaptive: bool = True
    cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
    context: bool = False
    context_dropout: float = 0.3
    epochs: int = 10
    batch_size: int = 64
    bptt: int = 35
    lr: float = 2e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    clip: float = 0.25
    schedule: str = "plateau"
    patience: int = 3
    seed: int = 1234
    max_vocab: int | None = None
    style: str = "wikitext"
    train_tokens: int | None = None
    valid_tokens: int | None = None
    run_dir: str | None = None
    save_dtype: str = "float32"
    init: str | None = None
    average_from: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "bptt": self.bptt >= 2,
            "lr": 0 < self.lr < 100, "clip": self.clip >= 0, "patience": self.patience >= 1,
            "weight_decay": self.weight_decay >= 0,
            "average_from": self.average_from is None or self.average_from >= 1,
            "schedule": self.schedule in SCHEDULES, "optimizer": self.optimizer in OPTIMIZERS,
            "save_dtype": self.save_dtype in ("float32", "float16"),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(arch=self.arch, vocab_size=vocab_size, emb=self.emb, hidden=self.hidden,
                           layers=self.layers, dropout=self.dropout, tie=self.tie, adaptive=self.adaptive,
                           cutoffs=list(self.cutoffs), context=self.context,
                           context_dropout=self.context_dropout)

    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return cache / "rnnlm" / "runs" / Path(self.out).resolve().as_posix().strip("/").replace("/", "__")

    def adopt(self, model: ModelConfig, style: str) -> TrainConfig:
        """This config with the architecture (and tokenizer style) of an existing model."""
        return replace(self, arch=model.arch, emb=model.emb, hidden=model.hidden, layers=model.layers,
                       tie=model.tie, adaptive=model.adaptive, cutoffs=list(model.cutoffs), context=model.context,
                       style=style)


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


@dataclass
class TrainResult:
    out: Path
    epochs_run: int
    seconds: float
    valid_ppl: float | None
    test_ppl: float | None
    parameters: int
    history: list[dict]


class Batches:
    """Batchified train stream plus the per-step title contexts (with context dropout)."""

    def __init__(self, stream: Stream, batch_size: int, bptt: int, world: World = World()) -> None:
        # with several ranks, each takes its own `batch_size` rows of the same batchified stream
        self.ids = world.rows(batchify(stream.ids, batch_size * world.size), batch_size)
        self.titles = world.rows(batchify(stream.titles, batch_size * world.size), batch_size)
        self.table = stream.title_table()
        self.bptt = bptt
        self.tokens = self.ids.numel()

    def __len__(self) -> int:
        return num_windows(self.ids, self.bptt)

    def __iter__(self):
        return tbptt_windows(self.ids, self.titles, self.bptt)


class Objective:
    """What the trainer minimises per window; subclasses may keep state across windows."""
    titles = False  # whether the objective needs article titles even for a model without context

    def start_epoch(self, batches: Batches) -> None:
        pass

    def __call__(self, model: RNNLM, feats: Tensor, inputs: Tensor, targets: Tensor, titles: Tensor) -> Tensor:
        raise NotImplementedError


class CrossEntropy(Objective):
    def __call__(self, model: RNNLM, feats: Tensor, inputs: Tensor, targets: Tensor, titles: Tensor) -> Tensor:
        return model.loss(feats, targets)


def title_context(model: RNNLM, table: tuple[Tensor, Tensor], titles: Tensor, drop: float = 0.0) -> Tensor:
    """Per-token context vectors [B, T, emb] for the targets' article titles."""
    vectors = model.context_vector(*table)[titles]
    if drop > 0:
        keep = torch.rand(titles.shape[0], 1, 1) >= drop  # drop whole rows: the model learns "no topic"
        vectors = vectors * keep
    return vectors


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


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          on_epoch: Callable[[EpochReport], None] | None = None,
          should_stop: Callable[[], bool] | None = None, progress: bool = True,
          objective: Objective | None = None, vocab: Vocab | None = None,
          provenance: dict | None = None) -> TrainResult:
    """Train a model from `cfg`. `objective` replaces the cross-entropy (distillation uses it);
    `vocab` fixes the vocabulary instead of building it from the training file."""
    out = Path(cfg.out)
    run_dir = cfg.resolved_run_dir()
    state_path = run_dir / "state.pt"
    if resume and not state_path.exists():
        resume = False  # nothing to resume: start fresh (the worker always asks to resume)
    if out.exists() and not (resume or overwrite):
        raise CheckpointError(f"{out} already exists; pass --overwrite to replace it or --resume to continue")
    objective = objective or CrossEntropy()
    base = load_model(cfg.init) if cfg.init else None
    if base is not None:
        if vocab is not None and vocab.itos != base.tokenizer.vocab.itos:
            raise CheckpointError(f"{cfg.init} has a different vocabulary from the one this run must use")
        vocab = base.tokenizer.vocab
        cfg = cfg.adopt(base.config, base.tokenizer.style)
        provenance = {**(provenance or {}), "init": _init_record(base)}
    corpus = load_corpus(cfg.data, vocab=vocab, max_vocab=cfg.max_vocab, titles=cfg.context or objective.titles,
                         train_tokens=cfg.train_tokens, valid_tokens=cfg.valid_tokens)
    tokenizer = Tokenizer(corpus.vocab, cfg.style)
    world = World.from_env()
    torch.manual_seed(cfg.seed)
    if base is None:
        model = RNNLM(cfg.model_config(len(corpus.vocab)))  # the same initial weights on every rank
    else:
        # the boost is refitted for the new weights in `finalize`
        model = RNNLM(replace(base.config, dropout=cfg.dropout, context_dropout=cfg.context_dropout,
                              context_boost=[]))
        model.load_state_dict({k: v.float() for k, v in base.model.state_dict().items()})
    opt = _make_optimizer(cfg, model)
    sched = _make_scheduler(cfg, opt)
    batches = Batches(corpus.train, cfg.batch_size, cfg.bptt, world)
    progress = progress and world.main

    start_epoch, best, bad_epochs, history, best_state, seconds = 1, math.inf, 0, [], None, 0.0
    averaged: AveragedModel | None = None
    if resume:
        saved = torch.load(state_path, weights_only=True)
        # through ModelConfig, so a field added since (at its default) does not break a resume
        if ModelConfig.from_dict(saved["model_config"]) != model.config:
            raise CheckpointError(f"run state in {run_dir} was made with a different model configuration")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if sched is not None and saved.get("scheduler"):
            sched.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        start_epoch, best, bad_epochs = saved["epoch"] + 1, saved["best"], saved["bad_epochs"]
        history, seconds = saved["history"], saved["seconds"]
        if saved.get("init") is not None:  # the start as it was: the --init folder may have changed since
            provenance = {**(provenance or {}), "init": saved["init"]}
        best_state = saved.get("best_model")
        if saved.get("averaged") is not None:
            averaged = AveragedModel(model)
            averaged.load_state_dict(saved["averaged"])
    if world.size > 1:
        torch.manual_seed(cfg.seed + 1000 * start_epoch + world.rank)  # different dropout masks per rank
    run_dir.mkdir(parents=True, exist_ok=True)

    step = sum(h["steps"] for h in history)
    epoch = start_epoch - 1
    stopped_early = bad_epochs >= cfg.patience
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        model.train()
        if averaged is None and cfg.average_from is not None and epoch >= cfg.average_from:
            averaged = AveragedModel(model)
        state = model.init_state(cfg.batch_size)
        objective.start_epoch(batches)
        total_loss, n_steps = 0.0, 0
        bar = tqdm(total=batches.tokens, unit="tok", unit_scale=True, desc=f"epoch {epoch}/{cfg.epochs}",
                   disable=not progress, mininterval=1.0, leave=False)
        for inputs, targets, titles in batches:
            if should_stop is not None and should_stop():
                bar.close()
                raise TrainingCancelled(f"stopped during epoch {epoch}")
            state = detach_state(state)
            context = title_context(model, batches.table, titles, cfg.context_dropout) if cfg.context else None
            feats, state = model.features(inputs, state, context)
            loss = objective(model, feats, inputs, targets, titles)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            world.average_gradients(model.parameters())
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            if averaged is not None:
                averaged.update_parameters(model)
            total_loss += loss.item()
            n_steps += 1
            step += 1
            bar.update(inputs.numel())
            if n_steps % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", ppl=f"{math.exp(min(loss.item(), 50)):.1f}")
        bar.close()
        train_seconds = time.perf_counter() - t0
        valid_ppl = None
        current = averaged.module if averaged is not None else model
        if corpus.valid is not None:
            valid_ppl = evaluate_stream(current, corpus.valid, use_context=cfg.context).perplexity
        metric = valid_ppl if valid_ppl is not None else math.exp(total_loss / max(n_steps, 1))
        improved = metric < best
        if improved:
            best, bad_epochs = metric, 0
            best_state = copy.deepcopy(current.state_dict())
        else:
            bad_epochs += 1
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(metric)
        elif sched is not None:
            sched.step()
        seconds += time.perf_counter() - t0
        history.append({"epoch": epoch, "steps": n_steps, "train_loss": total_loss / max(n_steps, 1),
                        "valid_ppl": valid_ppl, "seconds": round(time.perf_counter() - t0, 2),
                        "lr": opt.param_groups[0]["lr"]})
        stopped_early = bad_epochs >= cfg.patience
        if improved and world.main:
            _write_model(model, best_state, tokenizer, out, cfg, corpus, history, seconds, provenance)
        if world.main:
            _atomic_torch_save({
                "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None, "rng": torch.get_rng_state(),
                "best": best, "bad_epochs": bad_epochs, "history": history, "seconds": seconds,
                "best_model": best_state, "model_config": model.config.to_dict(),
                "averaged": averaged.state_dict() if averaged is not None else None,
                "init": (provenance or {}).get("init"),
            }, state_path)
        world.barrier()
        tokens_per_s = world.size * batches.tokens / max(train_seconds, 1e-9)
        remaining = 0 if stopped_early else cfg.epochs - epoch
        if progress:
            vp = f"{valid_ppl:.2f}" if valid_ppl is not None else "n/a"
            tqdm.write(f"epoch {epoch}/{cfg.epochs}: train loss {total_loss / max(n_steps, 1):.3f}, "
                       f"valid ppl {vp}, {tokens_per_s:,.0f} tok/s, lr {opt.param_groups[0]['lr']:.2g}"
                       + (" (best)" if improved else ""))
        if on_epoch is not None:
            on_epoch(EpochReport(epoch, cfg.epochs, step, total_loss / max(n_steps, 1), valid_ppl,
                                 best if math.isfinite(best) else None, tokens_per_s,
                                 remaining * (time.perf_counter() - t0), opt.param_groups[0]["lr"], improved))

    if best_state is None:
        raise DataError("training produced no model (no epoch finished)")
    if not world.main:
        world.barrier()  # rank 0 finalises the model folder
        return TrainResult(out, epoch, seconds, best, None, model.num_parameters(), history)
    test_ppl = finalize(out, corpus)
    world.barrier()
    meta = read_config(out)
    return TrainResult(out, epoch, seconds, meta["metrics"].get("valid_ppl"), test_ppl,
                       meta["parameters"], history)


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


def finalize(out: Path, corpus: Corpus, loaded: LoadedModel | None = None) -> float | None:
    """Re-measure the written model (as stored, e.g. fp16) on valid/test and record it in config.json.

    A context model first gets its title-word boost fitted on the validation split (a few numbers,
    see `fit_context_boost`), so its valid figure is measured on the text the boost was fitted to.
    `loaded` is the model as loaded from `out`, when the caller has it already.
    """
    loaded = loaded or load_model(out)
    meta = loaded.meta
    metrics = meta.setdefault("metrics", {})
    metrics.pop("fingerprint", None)  # recorded for the model as it was; re-record with `rnnlm eval --record`
    use_ctx = loaded.config.context
    if use_ctx and corpus.valid is not None:
        loaded.config.context_boost = fit_context_boost(loaded.model, corpus.valid)
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
