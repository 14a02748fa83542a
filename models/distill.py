"""Knowledge distillation (Hinton et al., 2015): a student learns from a teacher's soft labels.

loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(y, z_s)

The teacher runs in inference mode on the same TBPTT windows as the student, carrying its own
state, and its distribution is computed per batch (never stored for the corpus). With an adaptive
softmax on either side the full distribution it defines over the vocabulary is used.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor

from models.checkpoint import load_model
from models.config import DistillConfig
from models.device import place_model, resolve_device
from models.errors import CheckpointError
from models.objective import Batches, Objective, title_context
from models.rnnlm import RNNLM, State, detach_state
from models.train import TrainConfig, TrainResult, train

__all__ = ["DistillConfig", "Distillation", "distill", "kd_loss"]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, student_ce: Tensor,
            temperature: float, alpha: float) -> tuple[Tensor, Tensor]:
    """(total loss, KL term) for rows of logits [N, V]; `student_ce` is the hard-label loss."""
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    return alpha * temperature ** 2 * kl + (1 - alpha) * student_ce, kl


class Distillation(Objective):
    """The KD objective; keeps the teacher's recurrent state across the windows of an epoch."""
    titles = True

    def __init__(self, teacher: RNNLM, settings: DistillConfig | None = None, seed: int = 0) -> None:
        settings = settings or DistillConfig()
        self.teacher = teacher.eval()
        self.temperature, self.alpha, self.kd_fraction = settings.temperature, settings.alpha, settings.kd_fraction
        self.state: State | None = None
        self.table = None
        self.last_kl = float("nan")
        self.generator = torch.Generator().manual_seed(seed)

    def start_epoch(self, batches: Batches) -> None:
        self.state = None
        self.table = batches.table

    def __call__(self, model: RNNLM, feats: Tensor, inputs: Tensor, targets: Tensor, titles: Tensor) -> Tensor:
        with torch.inference_mode():
            ctx = title_context(self.teacher, self.table, titles) if self.teacher.config.context else None
            t_feats, state = self.teacher.features(inputs, self.state, ctx)
            self.state = detach_state(state)
        flat_t = t_feats.reshape(-1, t_feats.shape[-1]).clone()
        flat_s = feats.reshape(-1, feats.shape[-1])
        tgt = targets.reshape(-1)
        ce = model.loss(flat_s, tgt)
        if self.alpha == 0:
            return ce
        rows = torch.arange(flat_s.shape[0])
        if self.kd_fraction < 1.0:  # an unbiased estimate of the KL term from a random subset of positions
            keep = max(1, int(round(self.kd_fraction * rows.numel())))
            rows = torch.randperm(rows.numel(), generator=self.generator)[:keep]
        with torch.no_grad():
            teacher_logits = self.teacher.logits(flat_t[rows])
        loss, kl = kd_loss(model.logits(flat_s[rows]), teacher_logits, tgt[rows], ce, self.temperature, self.alpha)
        self.last_kl = float(kl.detach())
        return loss


def distill(cfg: TrainConfig, teacher: str, settings: DistillConfig | None = None, **train_kwargs) -> TrainResult:
    """Train the student described by `cfg` from the teacher model folder at `teacher`."""
    settings = settings or DistillConfig()
    loaded = load_model(teacher)
    if cfg.max_vocab is not None and cfg.max_vocab != len(loaded.tokenizer.vocab):
        raise CheckpointError("a student shares its teacher's vocabulary; drop --max-vocab")
    place_model(loaded.model, resolve_device(cfg.device))  # the teacher runs beside the student, in fp32
    objective = Distillation(loaded.model, settings, seed=cfg.seed)
    provenance = {"teacher": loaded.name, "teacher_path": str(loaded.path),
                  "teacher_parameters": loaded.model.num_parameters(), "distillation": asdict(settings)}
    return train(cfg, objective=objective, vocab=loaded.tokenizer.vocab, provenance=provenance, **train_kwargs)
