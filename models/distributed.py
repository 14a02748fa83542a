"""Data-parallel training across processes and machines started by `torchrun`.

Each rank trains on its own rows of the batchified stream and gradients are averaged with one
all-reduce per step before the optimiser runs (DDP's semantics; gloo works on CPUs). Without
torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, run state and progress."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend=os.environ.get("RNNLM_DIST_BACKEND", "gloo"))
        return cls(dist.get_rank(), dist.get_world_size())

    def rows(self, data: Tensor, per_rank: int) -> Tensor:
        """This rank's `per_rank` rows of a [size * per_rank, L] batchified tensor."""
        return data[self.rank * per_rank:(self.rank + 1) * per_rank]

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        if self.size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.size
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()
