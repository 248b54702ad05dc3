"""What a run shows: the curves and example images an evaluation keeps, the PNG plots drawn from
them and from the epoch history, and the TensorBoard event file."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import NUM_VAL, SHAPES_CLASSES
from vision_mtl.data.loader import build_data
from vision_mtl.engine.runners import load_runner
from vision_mtl.evaluation.evaluator import Evaluator
from vision_mtl.training.plots import write_run_plots
from vision_mtl.training.tensorboard import TensorBoardLog
from vision_mtl.utils.metrics_log import MetricsLog

ALL_PLOTS = ["losses.png", "metrics.png", "pr_curve.png", "confusion_matrix.png", "seg_iou.png", "val_predictions.png"]
EXAMPLES = 3


@pytest.fixture(scope="module")
def evaluation(trained_run):
    runner, cfg = load_runner(trained_run / "best.pt")
    data = build_data(cfg, classes=runner.info.classes, train=False)
    return Evaluator(data.val, runner.info.classes).run(runner, show_progress=False, examples=EXAMPLES)


@pytest.fixture(scope="module")
def history(trained_run) -> list[dict[str, float]]:
    return MetricsLog(trained_run).rows


def test_curves_have_the_shapes_of_the_classes(evaluation):
    curves, metrics = evaluation.curves, evaluation.metrics
    num_cls, num_det, num_seg = (len(SHAPES_CLASSES[t]) for t in ("classification", "detection", "segmentation"))
    confusion = curves["classification/confusion"]
    assert confusion.shape == (num_cls, num_cls) and confusion.sum() == NUM_VAL
    assert np.trace(confusion) / NUM_VAL == pytest.approx(metrics["classification/top1"])
    assert curves["detection/recall"].shape == (101,) and curves["detection/precision"].shape == (num_det, 101)
    assert curves["detection/precision_mean"].mean() == pytest.approx(metrics["detection/mAP50"], abs=1e-9)
    iou = curves["segmentation/iou"]
    assert iou.shape == (num_seg,)
    assert np.nanmean(iou) == pytest.approx(metrics["segmentation/mIoU"], abs=1e-12)


def test_examples_are_the_first_images_with_predictions_in_their_pixels(evaluation):
    examples = evaluation.examples
    assert [e.result.meta["index"] for e in examples] == list(range(EXAMPLES))
    for example in examples:
        image, result = example.image, example.result
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert result.mask.shape == image.shape[:2]
        height, width = image.shape[:2]
        assert (result.boxes[:, 0::2] <= width).all() and (result.boxes[:, 1::2] <= height).all()
        assert result.class_scores.shape == (len(SHAPES_CLASSES["classification"]),)
        assert result.classes == SHAPES_CLASSES


def test_every_plot_is_a_png_of_a_readable_size(evaluation, history, tmp_path):
    written = write_run_plots(tmp_path, history, evaluation, SHAPES_CLASSES)
    assert [p.name for p in written] == ALL_PLOTS
    for path in written:
        assert path.parent == tmp_path / "plots"
        with Image.open(path) as image:
            assert image.format == "PNG", path.name
            assert image.width >= 500 and image.height >= 300, path.name
            assert np.asarray(image.convert("L")).std() > 5, path.name  # something was drawn


def test_plots_of_absent_tasks_are_skipped(evaluation, history, tmp_path):
    """A classification-only run, as its history and evaluation would look."""
    only_cls = dataclasses.replace(
        evaluation, metrics={k: v for k, v in evaluation.metrics.items() if k.startswith("classification/")},
        curves={k: v for k, v in evaluation.curves.items() if k.startswith("classification/")}, examples=[])
    rows = [{k: v for k, v in row.items() if not k.startswith(("detection/", "segmentation/", "train/detection/",
                                                               "train/segmentation/"))} for row in history]
    written = write_run_plots(tmp_path, rows, only_cls, {"classification": SHAPES_CLASSES["classification"]})
    assert [p.name for p in written] == ["losses.png", "metrics.png", "confusion_matrix.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in written)


def test_plots_leave_no_pyplot_figures_open(evaluation, history, tmp_path):
    from matplotlib import pyplot

    write_run_plots(tmp_path, history, evaluation, SHAPES_CLASSES)
    assert pyplot.get_fignums() == []


def test_tensorboard_scalars_are_readable_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = TensorBoardLog(tmp_path)
    log.scalars(1, {"loss": 2.5, "val/detection/mAP": 0.125})
    log.scalars(2, {"loss": 1.5, "val/detection/mAP": 0.25})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "val/detection/mAP"}
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.5), (2, 1.5)]
    assert [(e.step, e.value) for e in events.Scalars("val/detection/mAP")] == [(1, 0.125), (2, 0.25)]
