"""When a run has had enough: the metric ``best.pt`` follows (``train.monitor``), early stopping
(``train.patience``) and the wall-clock budget (``train.max_minutes``)."""

from __future__ import annotations

import logging

from vision_mtl.config import TrainConfig
from vision_mtl.errors import ConfigError
from vision_mtl.evaluation.evaluator import primary_score
from vision_mtl.training.state import Position

logger = logging.getLogger(__name__)


class StopRules:
    """``score(metrics)`` is what "better" means; ``fitted_epochs(position)`` the epoch count a time
    budget allows; ``patience_over(position)`` whether to stop early."""

    def __init__(self, cfg: TrainConfig):
        self.monitor, self.patience, self.max_minutes = cfg.monitor, cfg.patience, cfg.max_minutes

    def score(self, metrics: dict[str, float]) -> float:
        """The monitored metric (higher is better), or the mean headline metric by default."""
        if self.monitor is None:
            return primary_score(metrics)
        if self.monitor not in metrics:
            raise ConfigError(f"train.monitor={self.monitor!r} is not a validation metric of this run; choose one "
                              f"of {', '.join(k for k in metrics if k.count('/') == 1)}")
        return metrics[self.monitor]

    def fitted_epochs(self, position: Position) -> int | None:
        """With a time budget: as many epochs as the mean epoch time so far fits in it (at least the
        ones done); None without one."""
        if not self.max_minutes:
            return None
        per_epoch = position.train_seconds / max(1, position.epoch)
        return max(position.epoch, int(self.max_minutes * 60 / per_epoch))

    def patience_over(self, position: Position, best_epoch: int | None) -> bool:
        if self.patience and position.stale_epochs >= self.patience:
            logger.info("no better %s for %d epochs: stopping early (best: epoch %s)",
                        self.monitor or "mean headline metric", self.patience, best_epoch)
            return True
        return False
