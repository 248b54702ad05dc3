"""The little coordination ``torchrun`` runs need: rank and world size from its environment, a
barrier, sums and gathers over processes. The group is gloo for CPU tensors, plus nccl for CUDA
tensors when GPUs are present (DDP's gradient all-reduce), so these helpers work either way."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """This process's place among ``world`` processes (1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Processes:
        """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
            # Left to interpreter teardown, the group's threads can abort the process at exit
            # ("terminate called without an active exception"): close it while Python still runs.
            atexit.register(_close_group)
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all processes."""
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def average_(self, tensor: torch.Tensor | None) -> None:
        """``tensor`` replaced in place by its mean over all processes (nothing to do alone, or for None)."""
        if self.world > 1 and tensor is not None:
            dist.all_reduce(tensor.div_(self.world))

    def max(self, value: float) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any (e.g. a stop signal seen by one)."""
        return self.max(float(flag)) > 0

    def gather(self, value: object) -> list[object]:
        """``value`` of every process, in rank order (picklable Python objects, small ones)."""
        if self.world == 1:
            return [value]
        out: list[object] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def _close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
