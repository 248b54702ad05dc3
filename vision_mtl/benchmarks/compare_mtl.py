"""Multi-task against single-task training on the same budget: every run's headline metrics, Δm, parameters,
training step time and inference time, as a markdown table and a CSV.

Δm is the mean over tasks of the relative change of the task's headline metric against the model
trained on that task alone, sign-corrected so that better is positive (Maninis et al. 2019, as LibMTL
reports it). Metrics are the final epoch's (not the best epoch's), so no run is picked on the val split.
Times are measured side by side at the end (interleaved rounds, ``benchmarks/model.py``), so machine
noise hits every run alike: a multi-task run's time is given as a fraction of the three single-task
runs' times added up, which is what training or running three models instead of one costs.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from vision_mtl.benchmarks.engine import trainer_step
from vision_mtl.utils.timing import interleaved_timings
from vision_mtl.config import TASKS, Config, config_from_dict, config_to_dict, flat_keys, load_config
from vision_mtl.engine.checkpoint import load_model
from vision_mtl.errors import ConfigError, first_line
from vision_mtl.training.trainer import Trainer
from vision_mtl.utils.atomic import atomic_open, write_atomic
from vision_mtl.utils.metrics_log import MetricsLog, write_json

logger = logging.getLogger(__name__)

# The one metric per task Δm is computed on, and +1 where higher is better.
HEADLINE: dict[str, tuple[str, int]] = {
    "classification": ("classification/top1", 1),
    "detection": ("detection/mAP", 1),
    "segmentation": ("segmentation/mIoU", 1),
}
OUTCOME = "outcome.json"  # written into a run's folder when it has finished: a rerun reuses it


@dataclass(frozen=True)
class Variant:
    """One training run of the comparison: a folder name and the overrides that make it."""

    name: str
    overrides: tuple[str, ...]
    tasks: tuple[str, ...]

    @property
    def single(self) -> bool:
        return len(self.tasks) == 1


@dataclass
class Outcome:
    """What a finished run gave: its final-epoch metrics, its parameter count and its training wall time."""

    variant: Variant
    metrics: dict[str, float]
    parameters: int
    train_seconds: float
    folder: Path


def plan_variants(tasks: Sequence[str], balancers: Sequence[str], schemes: Sequence[str],
                  extra: dict[str, list[str]]) -> list[Variant]:
    """The single-task run of each task, then the multi-task run under each balancer (hard sharing),
    each other sharing scheme (with the first balancer) and each ``extra`` set of overrides."""
    tasks = tuple(tasks)
    # a single-task baseline is plain training: its loss alone, weight 1
    variants = [Variant(f"single-{task}", (f"model.tasks=[{task}]", "mtl.balancer=fixed",
                                           f"train.loss_weights.{task}=1.0"), (task,)) for task in tasks]
    variants += [Variant(f"mtl-{balancer}", (f"mtl.balancer={balancer}",), tasks) for balancer in balancers]
    variants += [Variant(f"mtl-{balancers[0]}-{scheme}", (f"mtl.balancer={balancers[0]}", f"model.sharing={scheme}"),
                         tasks) for scheme in schemes if scheme != "hard"]
    variants += [Variant(name, tuple(overrides), tasks) for name, overrides in extra.items()]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"compare: two runs share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                          "give each --run its own NAME")
    return variants


def variant_config(config: str | Path, overrides: Sequence[str], variant: Variant, out: Path) -> Config:
    """The run's config: the shared config and overrides, then the variant's, into ``out/name``."""
    return load_config(config, [*overrides, *variant.overrides, f"run.dir={out}", f"run.name={variant.name}"])


def check_variants(config: str | Path, overrides: Sequence[str], variants: Sequence[Variant], out: Path) -> None:
    """Before any run trains: every run's config loads (a malformed or unknown key in one run's
    overrides is one line naming the run) and matches the finished or stopped run it would reuse."""
    for variant in variants:
        try:
            cfg = variant_config(config, overrides, variant, out)
        except ConfigError as exc:
            raise ConfigError(f"compare: run {variant.name}: {first_line(exc)}") from exc
        _check_same_settings(cfg, out / variant.name)


def run_variant(config: str | Path, overrides: Sequence[str], variant: Variant, out: Path) -> Outcome:
    """Train one run into ``out/name``, or take its outcome when it finished before; a run that was
    stopped part-way is resumed, so an interrupted comparison loses at most the epoch in progress."""
    folder = out / variant.name
    cfg = variant_config(config, overrides, variant, out)
    _check_same_settings(cfg, folder)
    if (folder / OUTCOME).is_file():
        logger.info("compare: %s finished before; reusing %s", variant.name, folder / OUTCOME)
        return _read_outcome(variant, folder)
    if (folder / "last.pt").is_file():
        logger.info("compare: resuming %s", folder)
        trainer = Trainer.resume(folder)
    else:
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"compare: '{folder}' holds files but no last.pt; remove it to train {variant.name} again")
        folder.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(cfg, run_dir=folder)
    trainer.fit()
    if trainer.stopped_by:
        raise KeyboardInterrupt
    final = MetricsLog(folder).rows[-1]
    write_json(folder / OUTCOME, {"metrics": final, "train_seconds": trainer.position.train_seconds,
                                  "parameters": sum(p.numel() for p in trainer.model.parameters())})
    return _read_outcome(variant, folder)


def _check_same_settings(cfg: Config, folder: Path) -> None:
    """A finished or stopped run is reused only if it was trained with the settings asked for now."""
    saved = folder / "config.yaml"
    if not saved.is_file():
        return
    before = flat_keys(config_to_dict(config_from_dict(yaml.safe_load(saved.read_text()))))
    now = flat_keys(config_to_dict(cfg))
    changed = [f"{key}: {before.get(key)} -> {now.get(key)}" for key in now if before.get(key) != now.get(key)]
    if changed:
        raise ConfigError(f"compare: '{folder}' was trained with other settings ({'; '.join(changed[:3])}); "
                          "remove that folder to train it again, or choose another --out")


def _read_outcome(variant: Variant, folder: Path) -> Outcome:
    data = json.loads((folder / OUTCOME).read_text())
    return Outcome(variant, data["metrics"], data["parameters"], data["train_seconds"], folder)


def delta_m(outcome: Outcome, singles: dict[str, Outcome]) -> float:
    """Mean sign-corrected relative change (in %) of each task's headline metric against its single-task run;
    NaN when a single-task run scored 0 (no relative change exists)."""
    changes = []
    for task in outcome.variant.tasks:
        key, sign = HEADLINE[task]
        base = singles[task].metrics[key]
        changes.append(sign * (outcome.metrics[key] - base) / base if base else math.nan)
    return 100 * sum(changes) / len(changes)


def measure_times(config: str | Path, overrides: Sequence[str], outcomes: list[Outcome], rounds: int,
                  image_size: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Median ms of one training step (a real :class:`Trainer` step on training batches) and of one
    inference forward (the trained weights, eval mode, ``batch_size`` images of ``image_size``), every
    run interleaved with the others."""
    with tempfile.TemporaryDirectory(prefix="vision_mtl_compare_") as tmp:
        steps, forwards = {}, {}
        images = torch.rand(batch_size, 3, image_size, image_size)
        for outcome in outcomes:
            cfg = variant_config(config, [*overrides, "train.plots=false"], outcome.variant, Path(tmp))
            trainer = Trainer(cfg)
            batches = list(itertools.islice(trainer.data.train, 2))
            steps[outcome.variant.name] = trainer_step(trainer, batches)
            model = load_model(outcome.folder / "last.pt")[0].eval()
            forwards[outcome.variant.name] = _forward(model, images)
        step_times = interleaved_timings(steps, rounds)
        forward_times = interleaved_timings(forwards, rounds)
    return {name: {"train step ms": 1000 * statistics.median(step_times[name]),
                   "inference ms": 1000 * statistics.median(forward_times[name])} for name in steps}


def _forward(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return model(images)

    return call


def compare_table(outcomes: list[Outcome], times: dict[str, dict[str, float]] | None) -> list[dict[str, Any]]:
    """One row per run: headline metrics, Δm, parameters, training wall time, and (when measured) step and
    inference time as a fraction of the single-task runs' added up."""
    singles = {o.variant.tasks[0]: o for o in outcomes if o.variant.single}
    tasks = [t for t in TASKS if t in singles]
    rows = []
    for outcome in outcomes:
        row: dict[str, Any] = {"run": outcome.variant.name, "settings": " ".join(outcome.variant.overrides)}
        for task in tasks:
            key = HEADLINE[task][0]
            row[key] = outcome.metrics.get(key) if task in outcome.variant.tasks else None
        row["Δm %"] = None if outcome.variant.single else delta_m(outcome, singles)
        row["parameters M"] = outcome.parameters / 1e6
        row["train wall s"] = outcome.train_seconds
        if times:
            for key in ("train step ms", "inference ms"):
                row[key] = times[outcome.variant.name][key]
                row[f"{key.split()[0]} x singles"] = (times[outcome.variant.name][key] /
                                                      sum(times[singles[t].variant.name][key] for t in tasks))
        rows.append(row)
    return rows


def write_tables(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """``compare.md`` and ``compare.csv`` in ``out``."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    markdown, table = out / "compare.md", out / "compare.csv"
    write_atomic(markdown, "\n".join(lines) + "\n")
    with atomic_open(table) as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return markdown, table


def _cell(column: str, value: Any) -> str:
    """Δm signed with 1 decimal, metrics and fractions with 3, larger numbers with 1; '—' where a run
    does not train the task."""
    if value is None:
        return "—"
    if column == "Δm %":
        return f"{value:+.1f}" if math.isfinite(value) else "n/a (a single-task run scored 0)"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value).replace("|", "\\|")
