"""What a training step minimises: the batches of TBPTT windows, the objective (cross-entropy, or
distillation's in models.distill) and the module a step runs forward, which DistributedDataParallel
wraps under torchrun."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.data import Stream, batchify, num_windows, tbptt_windows
from models.distributed import World
from models.rnnlm import RNNLM, State


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

    def step(self, model: RNNLM, inputs: Tensor, state: State, context: Tensor | None, targets: Tensor,
             titles: Tensor) -> tuple[Tensor, State]:
        """(loss, new state) of one window."""
        feats, state = model.features(inputs, state, context)
        return self(model, feats, inputs, targets, titles), state


class CrossEntropy(Objective):
    def __call__(self, model: RNNLM, feats: Tensor, inputs: Tensor, targets: Tensor, titles: Tensor) -> Tensor:
        return model.loss(feats, targets)

    def step(self, model: RNNLM, inputs: Tensor, state: State, context: Tensor | None, targets: Tensor,
             titles: Tensor) -> tuple[Tensor, State]:
        return model(inputs, state, context, targets)


def title_context(model: RNNLM, table: tuple[Tensor, Tensor], titles: Tensor, drop: float = 0.0) -> Tensor:
    """Per-token context vectors [B, T, emb] for the targets' article titles."""
    vectors = model.context_vector(*table)[titles]
    if drop > 0:
        # drop whole rows: the model learns "no topic"; drawn on the CPU's generator whatever the device
        keep = (torch.rand(titles.shape[0], 1, 1) >= drop).to(vectors.device)
        vectors = vectors * keep
    return vectors


class TrainStep(nn.Module):
    """What one training step runs forward: the model's window loss under the objective. Under
    torchrun it is this module that DistributedDataParallel wraps (its parameters are the model's)."""

    def __init__(self, model: RNNLM, objective: Objective, table: tuple[Tensor, Tensor], context_dropout: float):
        super().__init__()
        self.model = model
        self.objective, self.table, self.context_dropout = objective, table, context_dropout

    def forward(self, inputs: Tensor, state: State, targets: Tensor, titles: Tensor) -> tuple[Tensor, State]:
        model = self.model
        context = title_context(model, self.table, titles, self.context_dropout) if model.config.context else None
        return self.objective.step(model, inputs, state, context, targets, titles)
