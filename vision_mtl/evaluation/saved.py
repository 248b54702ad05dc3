"""Evaluating saved weights (a checkpoint or an exported ONNX model) on a validation split."""

from __future__ import annotations

import json
from pathlib import Path

from vision_mtl.data.loader import build_data
from vision_mtl.evaluation.evaluator import Evaluation, Evaluator
from vision_mtl.engine.runners import load_runner
from vision_mtl.utils.atomic import write_atomic
from vision_mtl.utils.metrics_log import write_json
from vision_mtl.utils.outputs import writing
from vision_mtl.utils.runtime import Precision


def evaluate_weights(weights: str | Path, config: str | Path | None = None,
                     overrides: list[str] | tuple[str, ...] = (), threshold: float = 0.5,
                     progress: bool = True, precision: Precision = "fp32", split: str = "val") -> Evaluation:
    """Metrics of ``weights`` on the ``split`` (``val`` or ``test``) of its own config (plus
    ``config``/``overrides`` on top). ``threshold``: the score at which a multi-label class counts as
    predicted (for F1); ``precision``: a checkpoint's (bf16 autocast where native, to measure what it costs)."""
    runner, cfg = load_runner(weights, config, overrides, precision)
    data = build_data(cfg, classes=runner.info.classes, train=False, eval_split=split)
    evaluator = Evaluator(data.val, runner.info.classes, cfg.model.classification.multi_label, threshold,
                          cfg.model.segmentation.ignore_index)
    return evaluator.run(runner, show_progress=progress)


def default_eval_folder(weights: str | Path, split: str = "val") -> Path:
    """Where an evaluation of ``weights`` goes unless told: ``<run>/eval/<stem>/`` for weights in a
    run folder (one with the ``config.yaml`` tools/train.py writes), else ``<stem>_eval/`` beside them;
    ``<stem>_test`` for the test split."""
    weights = Path(weights)
    name = weights.stem if split == "val" else f"{weights.stem}_{split}"
    if (weights.parent / "config.yaml").is_file():
        return weights.parent / "eval" / name
    return weights.with_name(f"{name}_eval")


def save_evaluation(evaluation: Evaluation, folder: str | Path) -> list[Path]:
    """``metrics.json`` and, with detection, ``detections.json`` (COCO results) in ``folder``, each
    written atomically. Returns the paths written."""
    folder = Path(folder)
    with writing(folder):
        metrics = folder / "metrics.json"
        write_json(metrics, evaluation.metrics)
        written = [metrics]
        if evaluation.detections is not None:
            detections = folder / "detections.json"
            write_atomic(detections, json.dumps(evaluation.detections))
            written.append(detections)
    return written


def format_metrics(metrics: dict[str, float]) -> str:
    """A readable two-column table, headline metrics first, per-class values after."""
    keys = sorted(metrics, key=lambda k: (k.count("/") > 1, k))
    width = max((len(k) for k in keys), default=0)
    return "\n".join(f"{k:<{width}}  {metrics[k]:.4f}" for k in keys)
