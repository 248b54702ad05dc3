"""What a user sees of a run, on the main process only: the progress bar (losses, LR, images/s),
TensorBoard scalars every ``train.log_every`` steps, ``metrics.csv`` per epoch, and the plots at
the end."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from vision_mtl.evaluation.evaluator import Evaluation
from vision_mtl.utils.metrics_log import MetricsLog

logger = logging.getLogger(__name__)


class Monitor:
    """``enabled`` False (ranks other than 0) makes every call a no-op."""

    def __init__(self, run_dir: Path, enabled: bool, log_every: int):
        self.run_dir, self.enabled, self.log_every = run_dir, enabled, log_every
        self.history = MetricsLog(run_dir) if enabled else None
        self.tensorboard = None
        if enabled:
            from vision_mtl.training.tensorboard import TensorBoardLog  # imports tensorboard: only where used

            self.tensorboard = TensorBoardLog(run_dir)
        self._tick, self._images = time.perf_counter(), 0

    def step(self, bar, update: int, images: int, losses: dict[str, float] | None, lr: float) -> None:
        """After each optimiser step; ``losses`` (synced floats) only every ``log_every`` steps."""
        self._images += images
        if not self.enabled or losses is None:
            return
        now = time.perf_counter()
        speed = self._images / max(now - self._tick, 1e-9)
        self._tick, self._images = now, 0
        bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}", refresh=False)
        self.tensorboard.scalars(update, {**{f"train/{k}": v for k, v in losses.items()},
                                          "train/lr": lr, "train/images_per_s": speed})

    def epoch(self, update: int, row: dict[str, float]) -> None:
        if self.enabled:
            self.history.append(row)
            self.tensorboard.scalars(update, {k if "/" in k else f"epoch/{k}": v for k, v in row.items() if k != "epoch"})

    def finish(self, evaluation: Evaluation | None, classes: dict[str, list[str]], plots: bool) -> None:
        if not self.enabled:
            return
        self.tensorboard.close()
        if plots and evaluation is not None:
            from vision_mtl.training.plots import write_run_plots  # matplotlib: only where used

            written = write_run_plots(self.run_dir, self.history.rows, evaluation, classes)
            if written:
                logger.info("plots: %s (%s)", written[0].parent, ", ".join(p.name for p in written))
        logger.info("TensorBoard: tensorboard --logdir %s", self.run_dir / "tensorboard")
