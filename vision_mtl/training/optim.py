"""Optimiser and learning-rate schedule, from timm: parameter groups without weight decay on norms
and biases, a learning-rate multiplier for the backbone, and a per-step warm-up + cosine schedule."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

from vision_mtl.config import TrainConfig
from vision_mtl.errors import ConfigError
from vision_mtl.models import MultiTaskModel

FINAL_LR_RATIO = 0.01  # the cosine ends at 1 % of train.lr
WARMUP_START_RATIO = 0.001


def build_optimizer(model: MultiTaskModel, cfg: TrainConfig,
                    extra: Iterable[torch.nn.Parameter] = ()) -> torch.optim.Optimizer:
    """``train.optimizer`` (any timm optimizer name) over two group pairs: the backbone, scaled by
    ``train.backbone_lr_mult`` (timm's schedulers honour ``lr_scale``), and the rest; in each,
    1-d parameters (norms, biases, scales) get no weight decay. ``extra`` (e.g. a task balancer's
    learned log-variances) is one more group, without weight decay."""
    groups = []
    for module, scale in ((model.backbone, cfg.backbone_lr_mult), (model.neck, 1.0), (model.heads, 1.0)):
        for group in param_groups_weight_decay(module, cfg.weight_decay):
            if group["params"]:
                groups.append({**group, "lr_scale": scale})
    extra = list(extra)
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0, "lr_scale": 1.0})
    try:
        return create_optimizer_v2(groups, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    except (AssertionError, ValueError) as exc:
        raise ConfigError(f"train.optimizer={cfg.optimizer!r} is not a timm optimizer name; use e.g. adamw, "
                          f"sgd, lamb ({exc})") from exc


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                    epochs: int) -> CosineLRScheduler:
    """Linear warm-up over ``train.warmup_epochs``, then cosine decay to 1 % of ``train.lr`` at the
    last step of ``epochs``; stepped per optimiser update with ``step_update``."""
    warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch))
    return CosineLRScheduler(optimizer, t_initial=_cosine_steps(steps_per_epoch * epochs, warmup),
                             lr_min=cfg.lr * FINAL_LR_RATIO, warmup_t=warmup, warmup_lr_init=cfg.lr * WARMUP_START_RATIO,
                             warmup_prefix=True, t_in_epochs=False)


def fit_schedule(scheduler: CosineLRScheduler, total_steps: int) -> None:
    """Stretch or shrink the cosine so it ends at ``total_steps`` (more epochs on resume, or a
    time budget measured after the first epoch)."""
    scheduler.t_initial = _cosine_steps(total_steps, scheduler.warmup_t)


def _cosine_steps(total_steps: int, warmup_steps: int) -> int:
    return max(2, total_steps - warmup_steps)  # timm warns that a 1-step cosine does nothing
