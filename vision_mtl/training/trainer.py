"""The training loop: joint multi-task steps, validation each epoch, exact resume, one or many processes.

The loop itself stays short; each concern lives in a small collaborator: :class:`Precision`
(autocast, fp16 scaling), timm's ``ModelEmaV3`` (weight averaging), :class:`EpochSampler` (seeded,
sharded, resumable order), ``distributed.py`` (device, SyncBatchNorm, DDP, compile), the
``mtl.balancer`` (how task losses combine), :class:`Monitor` (progress, TensorBoard, CSV, plots),
:class:`StopRules` (monitor, patience, time budget), :class:`StopSignals` (Ctrl-C / SIGTERM),
``training/transfer.py`` (init_from, freeze) and ``state.py`` (what ``last.pt`` holds).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3

from vision_mtl.config import Config, save_config
from vision_mtl.data.augment.device import DeviceAugment
from vision_mtl.data.augment.decode import decode_pending, decodes_on_device
from vision_mtl.data.loader import build_data, prepare_synthetic
from vision_mtl.data.problems import describe
from vision_mtl.data.sample import Batch
from vision_mtl.engine.checkpoint import load_weights, save_checkpoint
from vision_mtl.engine.model_info import ModelInfo
from vision_mtl.engine.runners import TorchRunner
from vision_mtl.errors import VisionMTLError
from vision_mtl.evaluation.evaluator import Evaluation, Evaluator
from vision_mtl.models import build_model
from vision_mtl.models.summary import sharing_summary
from vision_mtl.training.transfer import apply_transfer, freeze_stages, keep_frozen_in_eval, unfreeze_stages
from vision_mtl.mtl import build_balancer, captured_features, check_trainable, independent
from vision_mtl.mtl.schedule import build_schedule, with_skipped
from vision_mtl.training.distributed import process_device, replicate, share_buffers, with_sync_bn
from vision_mtl.training.monitor import Monitor
from vision_mtl.training.optim import build_optimizer, build_scheduler, fit_schedule
from vision_mtl.training.precision import Precision
from vision_mtl.training.signals import StopSignals
from vision_mtl.training.stopping import StopRules
from vision_mtl.training.state import Position, resume_point, rng_state, set_rng_state
from vision_mtl.utils.distributed import Processes
from vision_mtl.utils.metrics_log import write_json
from vision_mtl.utils.progress import progress
from vision_mtl.utils.runtime import new_run_dir, seed_everything

logger = logging.getLogger(__name__)

MAX_BAD_STEPS = 10
PLOT_EXAMPLES = 16
INIT_REPORT = "init_report.txt"  # what model.init_from loaded, skipped or left new


class TrainingError(VisionMTLError):
    """Training cannot go on (e.g. the loss stays NaN); the last good checkpoint is kept."""


class Trainer:
    """Trains a multi-task model from a :class:`Config` into ``run.dir/run.name``.

    Each step: the batch goes to the device, :class:`DeviceAugment` augments it there, the task
    losses are combined by ``mtl.balancer`` (default: ``train.loss_weights``) and back-propagated
    (accumulated over ``train.accumulate`` batches); each optimiser step clips gradients, skips and reports a
    non-finite one, steps the schedule and the EMA. Each epoch the val split is evaluated with the
    EMA weights, ``last.pt`` is written (also every ``train.checkpoint_every`` steps) and ``best.pt``
    when the monitored metric improves. Under ``torchrun`` the model is wrapped in DDP and rank 0
    alone writes files. :meth:`resume` continues a stopped run exactly.
    """

    def __init__(self, cfg: Config, resume: dict[str, Any] | None = None, run_dir: Path | None = None):
        self.cfg, train = cfg, cfg.train
        self.processes = Processes.from_env()
        self.main = self.processes.main
        if not self.main:
            logging.getLogger("vision_mtl").setLevel(logging.WARNING)
        self.device = process_device(train.device, self.processes)
        decodes_on_device(cfg, self.device)  # a data.decode conflict stops before any data is written
        self.balancer = build_balancer(cfg, cfg.model.tasks).to(self.device)
        if self.balancer.needs_features:
            check_trainable(cfg)
        seed_everything(train.seed)
        if self.main:
            prepare_synthetic(cfg)
        self.processes.barrier()
        self.data = build_data(cfg, classes=resume["classes"] if resume else None,
                               rank=self.processes.rank, world=self.processes.world)
        self.model = build_model(cfg.model, self.data.classes)
        self.load_report = apply_transfer(self.model, cfg.model, self.data.classes)  # init_from, freeze
        self.model.to(self.device)
        self.model = with_sync_bn(self.model, train.sync_bn, self.processes)
        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = ModelEmaV3(self.model, decay=train.ema_decay, use_warmup=True) if train.ema_decay else None
        self.schedule = build_schedule(cfg, cfg.model.tasks, self.data.train.dataset)
        self.optimizer = build_optimizer(self.model, train, self.balancer.parameters())
        freeze_stages(self.model, cfg.model.freeze_stages)  # after the optimiser: it keeps them for the unfreeze
        self.ddp, self.network = replicate(self.model, self.processes, self.device, train.compile, self.schedule.skips)
        self.precision = Precision(train.amp, self.device)
        self.batches_per_epoch = min(len(self.data.train), train.max_steps_per_epoch or len(self.data.train))
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / train.accumulate)
        self.scheduler = build_scheduler(self.optimizer, train, self.updates_per_epoch, train.epochs)
        self.augment = DeviceAugment(train.augment, self.device)
        self.evaluator = Evaluator(self.data.val, self.data.classes, cfg.model.classification.multi_label,
                                   ignore_index=cfg.model.segmentation.ignore_index)
        info = ModelInfo.of(self.model, cfg, self.data.classes, self.data.category_ids)
        self.runner = TorchRunner(self.deployable, info, self.device)
        self.run_dir = Path(self.processes.gather(str(run_dir or new_run_dir(cfg.run.dir, cfg.run.name))
                                                  if self.main else None)[0])
        if self.main:
            save_config(cfg, self.run_dir / "config.yaml")
            if self.load_report:
                (self.run_dir / INIT_REPORT).write_text("\n".join(self.load_report.lines()) + "\n")
                logger.info("%s; details in %s", self.load_report.summary(), self.run_dir / INIT_REPORT)
        self.monitor = Monitor(self.run_dir, self.main, train.log_every)
        self.stopping = StopRules(train)
        self.position = Position(epochs=train.epochs)
        self.best_score, self.best_metrics = -math.inf, {}
        self.sums: dict[str, torch.Tensor] = {}  # loss sums of the epoch's taken steps, on the device
        self.pending: list[dict[str, torch.Tensor]] = []  # losses of the micro-steps since the last update
        self.last_losses: dict[str, torch.Tensor] = {}
        self.bad_steps, self.stopped_by = 0, None
        if resume:
            self._restore(resume)

    @classmethod
    def resume(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Trainer:
        """Continue the run in folder ``path`` (or whose ``last.pt`` it is) from its ``last.pt``; ``overrides``
        may change only what keeps it the same run (more epochs, another device, ...; see
        ``state.RESUMABLE_OVERRIDES``)."""
        run_dir, state, cfg = resume_point(path, overrides)
        return cls(cfg, resume=state, run_dir=run_dir)

    @property
    def deployable(self) -> torch.nn.Module:
        """The weights validation, ``best.pt`` and export use: the EMA when it is on."""
        return self.ema.module if self.ema else self.model

    def fit(self) -> dict[str, float]:
        """Train the remaining epochs; returns the best epoch's validation metrics. When a stop
        signal arrives, the run is saved mid-epoch and ``stopped_by`` names the signal."""
        logger.info("run folder %s | %s | processes %d | tasks %s | %d train / %d val images", self.run_dir,
                    self.precision.describe(), self.processes.world, ", ".join(self.model.tasks),
                    len(self.data.train.dataset), len(self.data.val.dataset))
        if self.main:
            logger.info(sharing_summary(self.model, self.cfg.train.batch_size, self.cfg.data.image_size, self.device))
        evaluation, first_epoch = None, self.position.epoch
        with StopSignals() as stop:
            while self.position.epoch < self.position.epochs:
                if not self._train_epoch(stop):
                    self.stopped_by = stop.requested or "a signal on another process"
                    self._save()
                    return self.best_metrics
                evaluation = self._end_epoch()
                if self.position.epoch == first_epoch + 1:
                    self._report_load_problems()
                if self.stopping.patience_over(self.position, self.best_metrics.get("epoch")):
                    break
        self.monitor.finish(evaluation, self.data.classes, self.cfg.train.plots)
        return self.best_metrics

    def _train_epoch(self, stop: StopSignals) -> bool:
        """The rest of the current epoch; False when stopped by a signal."""
        if unfreeze_stages(self.model, self.cfg.model, self.position.epoch):  # DDP must learn of their gradients
            self.ddp, self.network = replicate(self.model, self.processes, self.device, self.cfg.train.compile,
                                               self.schedule.skips)
        self.network.train()
        keep_frozen_in_eval(self.model)
        position, accumulate = self.position, self.cfg.train.accumulate
        sampler = self.data.train.sampler
        sampler.set_epoch(position.epoch)
        self.augment.set_epoch(position.epoch, position.epochs)
        sampler.skip(position.batch * self.cfg.train.batch_size)
        started = time.perf_counter()
        bar = progress(self.data.train, total=self.batches_per_epoch, initial=position.batch, leave=False,
                       desc=f"epoch {position.epoch + 1}/{position.epochs}", disable=not self.main)
        for batch in bar:
            if position.batch >= self.batches_per_epoch:
                break
            position.batch += 1
            ends_update = position.batch % accumulate == 0 or position.batch == self.batches_per_epoch
            self.run_step(batch, sync_gradients=ends_update)
            if not ends_update:
                continue
            self.update()
            log_now = position.updates % self.cfg.train.log_every == 0
            self.monitor.step(bar, position.updates, len(batch) * accumulate * self.processes.world,
                              {**self._floats(self.last_losses), **self._task_weights()} if log_now else None,
                              self._lr())
            every = self.cfg.train.checkpoint_every
            if every and position.updates % every == 0 and position.batch < self.batches_per_epoch:
                self._save()
            if self.processes.any(stop.requested is not None):
                position.train_seconds += time.perf_counter() - started
                return False
        bar.close()
        position.train_seconds += time.perf_counter() - started
        return True

    def run_step(self, batch: Batch, sync_gradients: bool = True) -> None:
        """Forward, losses and backward of one batch (gradients accumulate until :meth:`update`)."""
        batch = self.augment(decode_pending(batch.to(self.device), self.data.train.dataset.load_problems))
        images = batch.images.contiguous(memory_format=self.memory_format)
        if not self.pending:  # the first batch of an optimiser step; gradients stay readable until the next
            self.optimizer.zero_grad(set_to_none=True)
        no_sync = self.ddp.no_sync() if self.ddp and not sync_gradients else contextlib.nullcontext()
        owns_backward = self.balancer.owns_backward
        tasks = self.schedule.next()  # None: every head; else only these run, and only their losses count
        capture = self.balancer.needs_features and not owns_backward  # GradNorm: the forward stays in DDP
        with no_sync, captured_features(self.model.features_end, capture) as captured:
            with self.precision.autocast():  # a gradient balancer needs the shared features (bypasses DDP)
                features = independent(self.model.features(images)) if owns_backward else captured
                raw = self.model.heads_forward(features, tasks) if owns_backward else self.network(images, tasks)
            task_losses = self.model.loss(_as_float(raw), batch.targets)  # losses in fp32
            present = {task: batch.targets[task]["valid"].any() for task in task_losses}
            task_sums, present = with_skipped({task: sum(parts.values()) for task, parts in task_losses.items()},
                                              present, self.balancer.tasks)
            total = self.balancer(task_sums, present, list(features.values()))
            if owns_backward:
                self.balancer.backward(task_sums, present, list(features.values()), self.model.shared_parameters(),
                                       self.model.task_parameters(), scale=1 / self.cfg.train.accumulate,
                                       loss_scale=self.precision.loss_scale(), processes=self.processes)
            else:
                self.precision.scale(total / self.cfg.train.accumulate).backward()
        self.last_losses = {"loss": total.detach(), **{f"{task}/{name}": v.detach() for task, parts in
                                                       task_losses.items() for name, v in parts.items()}}
        steps = dict.fromkeys((f"steps/{task}" for task in task_losses), torch.ones((), device=self.device)) \
            if self.schedule.skips else {}
        self.pending.append({**self.last_losses, **steps})  # steps/<task>: the batches that trained it

    def training_step(self, batch: Batch) -> dict[str, float]:
        """One optimiser step on one batch (no accumulation); returns its losses as floats
        (non-finite ones when the step was skipped)."""
        self.run_step(batch)
        losses = self._floats(self.last_losses)
        self.update()
        return losses

    def update(self) -> None:
        """Clip and step, unless the gradients are not finite (the one host sync of a step)."""
        self.precision.unscale(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        if not torch.isfinite(norm):
            self._skip_update()
            return
        self.bad_steps = 0
        for param in self.balancer.parameters():  # not in DDP: average its gradients over the processes
            self.processes.average_(param.grad)
        for losses in self.pending:  # the epoch's averages count the steps that were taken
            for key, value in losses.items():
                self.sums[key] = self.sums.get(key, 0.0) + value
        self.position.loss_batches += len(self.pending)
        self.pending = []
        self.precision.step(self.optimizer)
        if self.balancer.owns_backward:
            share_buffers(self.model, self.processes)
        self.position.updates += 1
        self.scheduler.step_update(self.position.updates)
        if self.ema:
            self.ema.update(self.model, step=self.position.updates)

    def _skip_update(self) -> None:
        self.pending = []
        if self.precision.scaler:
            self.precision.scaler.update()  # lowers the fp16 loss scale after an overflow
        losses = self._floats(self.last_losses)
        if self.precision.scaler and all(math.isfinite(v) for v in losses.values()):
            return  # an fp16 overflow, not a bad loss: the scaler handles it
        self.bad_steps += 1
        bad = ", ".join(f"{k}={v}" for k, v in losses.items() if not math.isfinite(v)) or "gradients"
        logger.warning("non-finite loss at epoch %d step %d (%s); step skipped", self.position.epoch + 1,
                       self.position.batch, bad)
        if self.bad_steps >= MAX_BAD_STEPS:
            self._save()
            raise TrainingError(f"loss non-finite for {MAX_BAD_STEPS} steps in a row ({bad}); lower train.lr or "
                                f"check the labels; the last good state is {self.run_dir / 'last.pt'}")

    def _end_epoch(self) -> Evaluation:
        """Validate with the deployable weights, log, checkpoint; advance the position."""
        share_buffers(self.deployable, self.processes)  # every shard evaluated with the statistics rank 0 saves
        evaluation = self.evaluator.run(self.runner, show_progress=self.main, processes=self.processes,
                                        examples=PLOT_EXAMPLES)  # collective: every rank asks alike
        metrics, position = evaluation.metrics, self.position
        score = self.stopping.score(metrics)
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_metrics = score, {"epoch": position.epoch + 1, **metrics}
        position.stale_epochs = 0 if improved else position.stale_epochs + 1
        sums = self._floats(self.sums)
        steps = {key: sums.pop(key, 0.0) for key in (f"steps/{t}" for t in self.schedule.tasks)} \
            if self.schedule.skips else {}  # the batches each task trained on, under mtl.schedule
        losses = {("loss" if k == "loss" else f"train/{k}"):  # a task's parts: the mean over its own steps
                  v / max(1, steps.get(f"steps/{k.split('/')[0]}", position.loss_batches)) for k, v in sums.items()}
        weights = self._task_weights()  # those this epoch trained with
        task_means = self._task_means(losses)
        self.balancer.epoch_end(task_means)
        self.schedule.epoch_end(task_means)
        position.epoch, position.batch, position.loss_batches, self.sums = position.epoch + 1, 0, 0, {}
        self._fit_to_time_budget()
        self._save(best=improved)
        self.monitor.epoch(position.updates, {"epoch": position.epoch, "lr": self._lr(), **losses, **weights,
                                              **steps, **metrics})
        logger.info("epoch %d/%d  loss %.3f  %s  (%.0fs so far)%s", position.epoch, position.epochs,
                    losses.get("loss", math.nan), _headline(metrics), position.train_seconds,
                    "  *best" if improved else "")
        if steps:
            logger.info("steps per task (mtl.schedule=%s): %s", self.cfg.mtl.schedule,
                        ", ".join(f"{key.removeprefix('steps/')} {count:.0f}" for key, count in steps.items()))
        return evaluation

    def _fit_to_time_budget(self) -> None:
        """The epoch count a ``train.max_minutes`` budget allows, and the cosine fitted to it."""
        epochs = self.stopping.fitted_epochs(self.position)
        if epochs is not None:
            self.position.epochs = epochs
            fit_schedule(self.scheduler, epochs * self.updates_per_epoch)

    def _save(self, best: bool = False) -> None:
        """``last.pt`` (and ``best.pt``) on rank 0; every rank hands over its RNG states."""
        rngs = self.processes.gather(rng_state())
        if not self.main:
            return
        self.position.loss_sums = self._floats(self.sums)
        extra = {"epoch": self.position.epoch, "best_score": self.best_score, "best_metrics": self.best_metrics,
                 "category_ids": self.data.category_ids}
        training = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.precision.state_dict(), "rng": rngs,
                    "position": self.position.to_dict(), "balancer": self.balancer.state_dict(),
                    "schedule": self.schedule.state_dict()}
        save_checkpoint(self.run_dir / "last.pt", self.deployable, self.cfg, self.data.classes, training=training,
                        **extra)
        if best:
            save_checkpoint(self.run_dir / "best.pt", self.deployable, self.cfg, self.data.classes, **extra)
        write_json(self.run_dir / "metrics.json", self.best_metrics)

    def _restore(self, state: dict[str, Any]) -> None:
        training, path = state["training"], self.run_dir / "last.pt"
        load_weights(self.model, training["model"], path)
        if self.ema:
            load_weights(self.ema.module, state["model"], path)
        self.optimizer.load_state_dict(training["optimizer"])
        self.balancer.load_state_dict(training.get("balancer", {}))  # absent from runs saved before balancers
        self.schedule.load_state_dict(training.get("schedule", {}))
        self.scheduler.load_state_dict(training["scheduler"])
        self.precision.load_state_dict(training["scaler"])
        self.position = Position(**training["position"])
        if not self.cfg.train.max_minutes:
            self.position.epochs = self.cfg.train.epochs  # a resume may ask for more epochs
            fit_schedule(self.scheduler, self.position.epochs * self.updates_per_epoch)
        self.sums = {k: torch.tensor(v, device=self.device) for k, v in self.position.loss_sums.items()}
        rngs = training["rng"]
        set_rng_state(rngs[self.processes.rank % len(rngs)])
        self.best_score, self.best_metrics = state["best_score"], state.get("best_metrics", {})

    def _report_load_problems(self) -> None:
        """After the first epoch (about one pass over the data) a summary of the problems only
        decoding reveals; each file had its own warning line when first met."""
        for loader in (self.data.train, self.data.val):
            problems = loader.dataset.load_problems
            counts = problems.counts()
            if counts:
                logger.warning("%s: %d image(s) with load problems so far: %s", problems.split,
                               sum(counts.values()), describe(counts))

    def _task_means(self, losses: dict[str, float]) -> dict[str, float]:
        """Each task's mean training loss of the epoch (its parts summed), averaged over the processes."""
        tasks = self.balancer.tasks
        local = [sum(v for k, v in losses.items() if k.startswith(f"train/{task}/")) for task in tasks]
        return {task: v / self.processes.world for task, v in zip(tasks, self.processes.sum(local))}

    def _task_weights(self) -> dict[str, float]:
        return {f"weight/{task}": w for task, w in self.balancer.weights().items()}

    def _lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)

    @staticmethod
    def _floats(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """Device scalars to floats in one transfer."""
        if not values:
            return {}
        stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values.values()]).cpu()
        return dict(zip(values, stacked.tolist()))


def _as_float(raw: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """Head outputs in fp32, so losses are computed in full precision after an autocast forward."""
    return {task: {k: v.float() if v.is_floating_point() else v for k, v in out.items()} for task, out in raw.items()}


def _headline(metrics: dict[str, float]) -> str:
    keys = ("classification/top1", "classification/f1", "detection/mAP", "detection/mAP50", "segmentation/mIoU")
    return "  ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
