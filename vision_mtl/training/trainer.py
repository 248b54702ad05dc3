"""The training loop: joint multi-task steps, validation each epoch, atomic checkpoints."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from vision_mtl.utils.progress import progress

from vision_mtl.config import Config, save_config
from vision_mtl.data.device_augment import DeviceAugment
from vision_mtl.data.loader import build_data
from vision_mtl.data.problems import describe
from vision_mtl.data.sample import Batch
from vision_mtl.engine.checkpoint import load_weights, save_checkpoint
from vision_mtl.evaluation.evaluator import Evaluator, primary_score
from vision_mtl.engine.model_info import ModelInfo
from vision_mtl.training.optim import build_optimizer, warmup_cosine
from vision_mtl.engine.runners import TorchRunner
from vision_mtl.errors import VisionMTLError
from vision_mtl.models import build_model
from vision_mtl.utils.metrics_log import MetricsLog, write_json
from vision_mtl.utils.runtime import new_run_dir, resolve_device, seed_everything

logger = logging.getLogger(__name__)

MAX_BAD_STEPS = 10


class TrainingError(VisionMTLError):
    """Training cannot go on (e.g. the loss stays NaN); the last good checkpoint is kept."""


class Trainer:
    """Trains a multi-task model from a :class:`Config` into ``run.dir/run.name``.

    Each epoch: batches go to the device, :class:`DeviceAugment` augments them there, the task
    losses are summed with the static ``train.loss_weights``, AdamW steps under a warm-up + cosine
    schedule with gradient clipping; then the val split is evaluated, ``last.pt`` is written and
    ``best.pt`` when the mean headline metric improves. ``resume`` continues a stopped run.
    """

    def __init__(self, cfg: Config, resume: dict[str, Any] | None = None, run_dir: Path | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed)
        self.data = build_data(cfg, classes=resume["classes"] if resume else None)
        self.model = build_model(cfg.model, self.data.classes).to(self.device)
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.steps_per_epoch = len(self.data.train)
        if cfg.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)
        self.scheduler = warmup_cosine(self.optimizer, max(1, round(cfg.train.warmup_epochs * self.steps_per_epoch)),
                                       cfg.train.epochs * self.steps_per_epoch)
        self.augment = DeviceAugment(cfg.train.augment)
        self.evaluator = Evaluator(self.data.val, self.data.classes, cfg.model.classification.multi_label,
                                   ignore_index=cfg.model.segmentation.ignore_index)
        info = ModelInfo.of(self.model, cfg, self.data.classes, self.data.category_ids)
        self.runner = TorchRunner(self.model, info, self.device)
        self.run_dir = run_dir or new_run_dir(cfg.run.dir, cfg.run.name)
        save_config(cfg, self.run_dir / "config.yaml")
        self.log = MetricsLog(self.run_dir)
        self.start_epoch, self.best_score, self.best_metrics = 0, -math.inf, {}
        if resume:
            load_weights(self.model, resume["model"], self.run_dir / "last.pt")
            self.optimizer.load_state_dict(resume["optimizer"])
            self.scheduler.load_state_dict(resume["scheduler"])
            self.start_epoch, self.best_score = resume["epoch"] + 1, resume["best_score"]
            self.best_metrics = resume.get("best_metrics", {})
        self.bad_steps = 0

    def fit(self) -> dict[str, float]:
        """Train the remaining epochs; returns the best epoch's validation metrics."""
        logger.info("run folder %s | device %s | tasks %s | %d train / %d val images", self.run_dir, self.device,
                    ", ".join(self.model.tasks), len(self.data.train.dataset), len(self.data.val.dataset))
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            started = time.perf_counter()
            losses = self.train_one_epoch(epoch)
            metrics = self.evaluator.run(self.runner).metrics
            score = primary_score(metrics)
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_metrics = score, {"epoch": epoch + 1, **metrics}
            self._save(epoch, improved)
            self.log.append({"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], **losses, **metrics})
            logger.info("epoch %d/%d  loss %.3f  %s  (%.0fs)%s", epoch + 1, self.cfg.train.epochs, losses["loss"],
                        _headline(metrics), time.perf_counter() - started, "  *best" if improved else "")
            if epoch == self.start_epoch:
                self._report_load_problems()
        return self.best_metrics

    def _report_load_problems(self) -> None:
        """After the first epoch (about one pass over the data) a summary of the problems only
        decoding reveals; each file had its own warning line when first met."""
        for loader in (self.data.train, self.data.val):
            problems = loader.dataset.load_problems
            counts = problems.counts()
            if counts:
                logger.warning("%s: %d image(s) with load problems so far: %s", problems.split,
                               sum(counts.values()), describe(counts))

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        totals: dict[str, float] = {}
        bar = progress(self.data.train, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                   leave=False)
        for step, batch in enumerate(bar):
            if step >= self.steps_per_epoch:
                break
            losses = self.training_step(batch)
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix(loss=f"{losses['loss']:.3f}", refresh=False)  # the bar redraws at its own interval
        return {f"train/{k}" if k != "loss" else k: v / self.steps_per_epoch for k, v in totals.items()}

    def training_step(self, batch: Batch) -> dict[str, float]:
        """One optimisation step; returns the loss components as floats."""
        batch = self.augment(batch.to(self.device))
        images = batch.images.contiguous(memory_format=self.memory_format)
        task_losses = self.model.loss(self.model(images), batch.targets)
        weights = self.cfg.train.loss_weights
        total = sum(getattr(weights, task) * sum(parts.values()) for task, parts in task_losses.items())
        logged = {f"{task}/{name}": float(v.detach()) for task, parts in task_losses.items() for name, v in parts.items()}
        if not torch.isfinite(total):
            self._skip_bad_step(logged)
            return {"loss": 0.0, **{k: 0.0 for k in logged}}
        self.bad_steps = 0
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(total.detach()), **logged}

    def _skip_bad_step(self, logged: dict[str, float]) -> None:
        self.bad_steps += 1
        bad = ", ".join(f"{k}={v}" for k, v in logged.items() if not math.isfinite(v))
        logger.warning("non-finite loss (%s); step skipped", bad)
        if self.bad_steps >= MAX_BAD_STEPS:
            raise TrainingError(f"loss non-finite for {MAX_BAD_STEPS} steps in a row ({bad}); lower train.lr or "
                                f"check the labels; resume from {self.run_dir / 'last.pt'}")

    def _save(self, epoch: int, improved: bool) -> None:
        extra = {"epoch": epoch, "best_score": self.best_score, "best_metrics": self.best_metrics,
                 "category_ids": self.data.category_ids}
        save_checkpoint(self.run_dir / "last.pt", self.model, self.cfg, self.data.classes,
                        optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), **extra)
        if improved:
            save_checkpoint(self.run_dir / "best.pt", self.model, self.cfg, self.data.classes, **extra)
        write_json(self.run_dir / "metrics.json", self.best_metrics)


def _headline(metrics: dict[str, float]) -> str:
    keys = ("classification/top1", "classification/f1", "detection/mAP", "detection/mAP50", "segmentation/mIoU")
    return "  ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
