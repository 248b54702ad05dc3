"""The training sampler: an order fixed by (seed, epoch), sharded over processes, resumable mid-epoch.

One class covers what ``RandomSampler``, ``WeightedRandomSampler`` and ``DistributedSampler`` do
separately, because exact resume needs all three at once: every process draws the same epoch
order from ``seed + epoch`` (a permutation, or draws with replacement by the sources' weights),
takes every ``world``-th index from its ``rank``, and can start after the samples it had already
consumed before a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Indices of one epoch for process ``rank`` of ``world``.

    ``weights``: per-image draw weights (with replacement), or None for a plain shuffle. Each
    process yields ``len(self)`` indices; the epoch length is the dataset size rounded down to a
    multiple of ``world`` so every process takes the same number of steps (DDP needs that).
    Call :meth:`set_epoch` before each epoch and :meth:`skip` to resume after ``n`` samples.
    ``with_seeds``: yield ``(index, seed)`` pairs instead, the seed fixed by (seed, epoch, position in
    the epoch), for per-image augmentation in the workers that resumes exactly.
    """

    def __init__(self, size: int, seed: int, weights: np.ndarray | None = None, rank: int = 0, world: int = 1,
                 with_seeds: bool = False):
        self.size, self.seed, self.rank, self.world, self.with_seeds = size, seed, rank, world, with_seeds
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch, self.skipped = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.skipped = epoch, 0

    def skip(self, samples: int) -> None:
        """Leave out the first ``samples`` indices of this process's epoch (already trained on)."""
        self.skipped = samples

    def __len__(self) -> int:
        return max(1, self.size // self.world) - self.skipped

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = max(self.world, self.size - self.size % self.world)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
            order = order.repeat(-(-total // self.size))[:total]  # fewer images than processes: wrap
        else:
            order = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        indices = order[self.rank::self.world][self.skipped:].tolist()
        if not self.with_seeds:
            return iter(indices)
        positions = range(total)[self.rank::self.world][self.skipped:]
        # hash() of a tuple of ints is the same in every process and run (no PYTHONHASHSEED salt)
        return iter((i, hash((self.seed, self.epoch, p)) % 2**32) for i, p in zip(indices, positions))
