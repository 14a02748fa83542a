"""Data-parallel training across processes and machines started by `torchrun`.

Each rank trains on its own rows of the batchified stream; torch's DistributedDataParallel averages
the gradients with all-reduces during the backward pass (gloo works on CPUs). Without torchrun's
environment (WORLD_SIZE unset or 1) the model runs as it is and nothing here communicates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


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

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """`module` in DistributedDataParallel when there are several ranks, else `module` itself."""
        if self.size == 1:
            return module
        return DistributedDataParallel(module, find_unused_parameters=find_unused_parameters)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()
