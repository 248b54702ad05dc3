"""Run under torchrun by test_training_ddp.py: trains with the given overrides, then saves what
each process ended with to ``<out>/rank<r>.pt``: its parameters (BatchNorm running
statistics stay per process without SyncBatchNorm, as in any DDP run), its buffers, its balancer's
state, its final validation metrics, per step whether its batch held any detection label, and how
many gradient buckets DDP all-reduced (none when a gradient balancer bypasses it).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_train.py OUT key=value ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from vision_mtl.config import load_config
from vision_mtl.training.trainer import Trainer


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    trainer = Trainer(load_config(None, overrides))
    had_detection: list[bool] = []
    run_step = trainer.run_step

    def recording_step(batch, sync_gradients=True):
        had_detection.append(bool(batch.targets["detection"]["valid"].any()))
        run_step(batch, sync_gradients)

    trainer.run_step = recording_step
    buckets: list[int] = []

    def counting_hook(state, bucket):
        buckets.append(1)
        return allreduce_hook(state, bucket)

    trainer.ddp.register_comm_hook(None, counting_hook)
    trainer.fit()
    metrics = trainer.evaluator.run(trainer.runner, show_progress=False, processes=trainer.processes).metrics
    torch.save({"world": trainer.processes.world, "parameters": {n: p.detach() for n, p in trainer.model.named_parameters()}, "metrics": metrics,
                "had_detection": had_detection, "run_dir": str(trainer.run_dir),
                "buffers": {n: b.detach() for n, b in trainer.model.named_buffers()},
                "balancer": trainer.balancer.state_dict(), "ddp_buckets": len(buckets)},
               out / f"rank{trainer.processes.rank}.pt")


if __name__ == "__main__":
    main()
