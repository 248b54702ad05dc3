"""TensorBoard scalars of a run, in ``run_dir/tensorboard`` (``tensorboard --logdir runs``)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class TensorBoardLog:
    """One event file per run, written by the main process only (the trainer creates it there)."""

    def __init__(self, run_dir: Path):
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log each ``name: value`` at ``step`` (names such as ``train/detection/box`` group into panels)."""
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
