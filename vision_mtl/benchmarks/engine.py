"""The trainer's cost over a bare loop: one optimiser step of :class:`Trainer` (augmentation,
forward, fp32 losses, backward, clipping, schedule, EMA, loss bookkeeping) against a hand-written
step on the same model, batches and optimiser, and the trainer under each mixed precision the
device offers; all interleaved in one process."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import statistics
import tempfile
from collections.abc import Callable

import torch

from vision_mtl.utils.timing import interleaved_timings
from vision_mtl.config import Config
from vision_mtl.data.augment.decode import decode_pending
from vision_mtl.training.optim import build_optimizer
from vision_mtl.training.trainer import Trainer

BATCHES = 4  # distinct batches cycled through, taken from the training loader once


def benchmark_engine(cfg: Config, rounds: int, amp_modes: list[str]) -> dict[str, float]:
    """Median ms per optimiser step of each candidate, the trainer's overhead over the bare loop,
    and each precision's step time relative to fp32."""
    with tempfile.TemporaryDirectory(prefix="vision_mtl_engine_") as tmp:
        base = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=tmp),
                                   train=dataclasses.replace(cfg.train, amp="off", plots=False))
        trainer = Trainer(base)
        batches = list(itertools.islice(trainer.data.train, BATCHES))
        candidates = {"bare loop fp32": _bare_step(trainer, batches), "trainer fp32": trainer_step(trainer, batches)}
        for mode in amp_modes:
            other = Trainer(dataclasses.replace(base, train=dataclasses.replace(base.train, amp=mode)))
            candidates[f"trainer {mode}"] = trainer_step(other, batches)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        times = interleaved_timings(candidates, rounds, sync=sync)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    out = {f"{name} ms": value for name, value in medians.items()}
    out["trainer overhead over bare loop"] = medians["trainer fp32"] / medians["bare loop fp32"] - 1
    for mode in amp_modes:
        out[f"trainer {mode} / fp32"] = medians[f"trainer {mode}"] / medians["trainer fp32"]
    return out


def trainer_step(trainer: Trainer, batches: list) -> Callable[[], None]:
    """One optimiser step of ``trainer`` per call, cycling through ``batches``."""
    cycle = itertools.cycle(batches)
    trainer.network.train()

    def step() -> None:
        trainer.run_step(next(cycle))
        trainer.update()

    return step


def _bare_step(trainer: Trainer, batches: list) -> Callable[[], None]:
    """The loop anyone would write by hand: decode (when the loader left JPEGs to the device), augment, forward, weighted loss sum, backward, step."""
    model = copy.deepcopy(trainer.model).train()
    optimizer = build_optimizer(model, trainer.cfg.train)
    weights, augment = trainer.cfg.train.loss_weights, trainer.augment
    cycle = itertools.cycle(batches)

    def step() -> None:
        batch = augment(decode_pending(next(cycle).to(trainer.device)))
        losses = model.loss(model(batch.images.contiguous(memory_format=trainer.memory_format)), batch.targets)
        total = sum(getattr(weights, task) * sum(parts.values()) for task, parts in losses.items())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step
