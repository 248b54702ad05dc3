"""PNG plots of a run, to see what happened: loss and headline metric curves per epoch, and
from one evaluation the detection precision-recall curves, the classification confusion matrix,
per-class segmentation IoU and a grid of validation images with their predictions drawn.

Figures are ``matplotlib.figure.Figure`` objects on their own Agg canvas: no pyplot, so nothing
global (the backend, open figures) changes for the caller, and no display is needed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vision_mtl.engine.results import ImageResult
from vision_mtl.evaluation.evaluator import Evaluation, Example, primary_score
from vision_mtl.utils.atomic import atomic_open
from vision_mtl.engine.overlay import draw_overlay

TASKS = ("classification", "detection", "segmentation")
HEADLINE = ("classification/top1", "classification/f1", "detection/mAP", "detection/mAP50", "segmentation/mIoU")
DISPLAY_SCORE, DISPLAY_BOXES = 0.25, 10  # the picture grid draws at most this many detections an image, from this score
GRID_COLUMNS = 4
MIN_PICTURE_SIDE = 256  # small inputs are enlarged so that the drawn labels stay readable
MAX_NAMED_CLASSES = 20  # beyond this, per-class curves lose their legend and matrices their cell values
DPI = 110


def write_run_plots(run_dir: Path, history: list[dict[str, float]], evaluation: Evaluation,
                    classes: dict[str, list[str]]) -> list[Path]:
    """Write the run's plots as ``run_dir/plots/*.png`` and return their paths; a plot whose data is
    absent (a task the model lacks, an evaluation without examples) is skipped.

    ``history``: one row per epoch as in ``metrics.csv`` (``epoch``, ``loss``,
    ``train/<task>/<part>``, validation metric keys). ``evaluation``: usually the best epoch's,
    with its ``curves`` and ``examples``. ``classes``: each task's class names.
    """
    figures = {
        "losses.png": _losses(history),
        "metrics.png": _metrics(history),
        "pr_curve.png": _pr_curve(evaluation, classes.get("detection", [])),
        "confusion_matrix.png": _confusion(evaluation, classes.get("classification", [])),
        "seg_iou.png": _seg_iou(evaluation, classes.get("segmentation", [])),
        "val_predictions.png": _predictions(evaluation),
    }
    written = []
    for name, figure in figures.items():
        if figure is not None:
            path = run_dir / "plots" / name
            with atomic_open(path, "wb") as fh:
                figure.savefig(fh, format="png", dpi=DPI)
            written.append(path)
    return written


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _legend_outside(ax: Axes, **kwargs) -> None:
    """The legend to the right of the axes, where it cannot hide a curve."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small", **kwargs)


def _epoch_axis(ax: Axes, epochs: np.ndarray) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(np.nanmin(epochs) - 0.5, np.nanmax(epochs) + 0.5)  # whole epochs as ticks, even for one
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def _column(history: list[dict[str, float]], key: str) -> np.ndarray:
    return np.array([row.get(key, np.nan) for row in history], np.float64)


def _losses(history: list[dict[str, float]]) -> Figure | None:
    """Training loss per epoch: the total, and each task's parts summed."""
    if not history or all("loss" not in row for row in history):
        return None
    epochs = _column(history, "epoch")
    figure = _figure(8, 4.5)
    ax = figure.add_subplot()
    for task in TASKS:
        parts = sorted({k for row in history for k in row if k.startswith(f"train/{task}/")})
        if parts:
            ax.plot(epochs, sum(_column(history, k) for k in parts), marker="o", markersize=3, label=task)
    ax.plot(epochs, _column(history, "loss"), marker="o", markersize=3, color="black", linewidth=2,
            label="total (weighted)")
    ax.set(title="Training loss", ylabel="mean loss per step")
    _epoch_axis(ax, epochs)
    _legend_outside(ax)
    return figure


def _metrics(history: list[dict[str, float]]) -> Figure | None:
    """Validation headline metrics per epoch, with the best epoch (by the trainer's score) marked."""
    keys = [k for k in HEADLINE if any(k in row for row in history)]
    if not keys:
        return None
    epochs = _column(history, "epoch")
    figure = _figure(8, 4.5)
    ax = figure.add_subplot()
    for key in keys:
        ax.plot(epochs, _column(history, key), marker="o", markersize=3, label=key)
    best = max(history, key=primary_score)
    ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best epoch ({best['epoch']:.0f})")
    ax.set(title="Validation metrics", ylabel="metric", ylim=(0, 1.02))
    _epoch_axis(ax, epochs)
    _legend_outside(ax)
    return figure


def _pr_curve(evaluation: Evaluation, names: list[str]) -> Figure | None:
    """Detection precision-recall at IoU 0.5 per class (thin) and their mean (bold), each with its AP50."""
    curves = evaluation.curves
    if "detection/precision" not in curves:
        return None
    recall, mean = curves["detection/recall"], curves["detection/precision_mean"]
    named = len(names) <= MAX_NAMED_CLASSES
    figure = _figure(8, 5.5)
    ax = figure.add_subplot()
    for name, precision in zip(names, curves["detection/precision"]):
        if not np.isnan(precision).any():
            ax.plot(recall, precision, linewidth=1, alpha=0.8 if named else 0.3,
                    color=None if named else "tab:blue", label=f"{name} {precision.mean():.3f}" if named else None)
    ax.plot(recall, mean, color="black", linewidth=3, label=f"mean (AP50) {mean.mean():.3f}")
    ax.set(title="Detection precision-recall (IoU 0.5)", xlabel="recall", ylabel="precision",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    _legend_outside(ax, title="class, AP50")
    return figure


def _confusion(evaluation: Evaluation, names: list[str]) -> Figure | None:
    """Multi-class confusion matrix, each row normalised to the fraction of that true class."""
    if "classification/confusion" not in evaluation.curves:
        return None
    counts = evaluation.curves["classification/confusion"]
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(14.0, max(5.0, 0.45 * len(names) + 2.5))
    figure = _figure(side + 1.2, side)
    ax = figure.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if len(names) <= 3 * MAX_NAMED_CLASSES:
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(len(names)), names)
    if len(names) <= MAX_NAMED_CLASSES:
        for (row, col), value in np.ndenumerate(fractions):
            if counts[row].sum():
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize="small",
                        color="white" if value > 0.5 else "black")
    ax.set(title=f"Classification confusion matrix ({int(counts.sum())} images)", xlabel="predicted class",
           ylabel="true class")
    return figure


def _seg_iou(evaluation: Evaluation, names: list[str]) -> Figure | None:
    """Per-class IoU bars, each with its value (a class absent from the validation masks: "absent")."""
    if "segmentation/iou" not in evaluation.curves:
        return None
    iou = evaluation.curves["segmentation/iou"]
    present = ~np.isnan(iou)
    figure = _figure(8, min(40.0, max(3.0, 0.3 * len(names) + 1.5)))
    ax = figure.add_subplot()
    rows = np.arange(len(names))
    bars = ax.barh(rows, np.where(present, iou, 0.0), color="tab:green")
    ax.bar_label(bars, [f"{v:.3f}" if ok else "absent" for v, ok in zip(iou, present)], padding=3, fontsize="small")
    ax.axvline(iou[present].mean(), color="black", linestyle="--", label=f"mIoU {iou[present].mean():.3f}")
    ax.set_yticks(rows, names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first class at the top
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set(title="Segmentation IoU per class", xlabel="IoU", xlim=(0, 1.1))  # room for the value of a bar near 1
    ax.grid(axis="x", alpha=0.3)
    _legend_outside(ax)
    return figure


def _predictions(evaluation: Evaluation) -> Figure | None:
    """The examples with their predictions drawn (the best few detections above DISPLAY_SCORE)."""
    if not evaluation.examples:
        return None
    multi_label = "classification/f1" in evaluation.metrics  # only multi-label classification reports F1
    count = len(evaluation.examples)
    columns = min(GRID_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = _figure(3.2 * columns, 3.4 * rows + 0.4)
    for i, example in enumerate(evaluation.examples):
        ax = figure.add_subplot(rows, columns, i + 1)
        ax.imshow(draw_overlay(*_for_display(example), multi_label=multi_label))
        ax.set_title(Path(example.result.meta.get("path", f"image {i}")).name, fontsize="small")
        ax.set_axis_off()
    with_boxes = evaluation.examples[0].result.boxes is not None
    figure.suptitle("Validation predictions" + (f" (at most {DISPLAY_BOXES} detections an image, score >= "
                                                f"{DISPLAY_SCORE})" if with_boxes else ""))
    return figure


def _for_display(example: Example) -> tuple[np.ndarray, ImageResult]:
    """The example enlarged by a whole factor to at least MIN_PICTURE_SIDE, its predictions with it,
    and only the detections worth drawing."""
    image, result = example.image, example.result
    factor = max(1, math.ceil(MIN_PICTURE_SIDE / max(image.shape[:2])))
    image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    changes = {}
    if result.mask is not None:
        changes["mask"] = result.mask.repeat(factor, axis=0).repeat(factor, axis=1)
    if result.boxes is not None:
        best = np.argsort(-result.scores, kind="stable")[:DISPLAY_BOXES]
        keep = best[result.scores[best] >= DISPLAY_SCORE]
        changes.update(boxes=result.boxes[keep] * factor, scores=result.scores[keep], labels=result.labels[keep])
    return image, dataclasses.replace(result, **changes)
