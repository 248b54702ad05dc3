"""Evaluation of a trained model against independent computations (pycocotools on the written
results file, numpy on the same masks), and the exported ONNX model evaluated like the checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import one_line, run_tool
from test_metrics import numpy_segmentation
from test_tools import assert_user_error
from vision_mtl.data.loader import build_data
from vision_mtl.evaluation.saved import evaluate_weights, save_evaluation
from vision_mtl.engine.results import split_predictions
from vision_mtl.engine.runners import load_runner
from vision_mtl.errors import ConfigError


@pytest.fixture(scope="module")
def best(trained_run) -> Path:
    return trained_run / "best.pt"


@pytest.fixture(scope="module")
def evaluation(best):
    return evaluate_weights(best, progress=False)


@pytest.fixture(scope="module")
def exported(best, tmp_path_factory):
    """tools/export_onnx.py on the trained checkpoint: (ONNX path, the tool's output)."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    proc = run_tool("export_onnx.py", "--weights", str(best), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout + proc.stderr


def test_detection_map_equals_pycocotools_on_the_results_file(evaluation, shapes_root, tmp_path):
    written = save_evaluation(evaluation, tmp_path)
    assert [p.name for p in written] == ["metrics.json", "detections.json"]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(shapes_root / "val" / "annotations.json"))
        results = gt.loadRes(str(written[1]))  # original image and category ids, or loadRes would refuse
        cocoeval = COCOeval(gt, results, iouType="bbox")
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    assert len(results.getAnnIds()) > 0
    assert {d["category_id"] for d in json.loads(written[1].read_text())} <= set(gt.getCatIds())
    metrics = json.loads(written[0].read_text())
    for name, value in zip(("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large"), cocoeval.stats):
        if value >= 0:
            assert metrics[f"detection/{name}"] == pytest.approx(value, abs=1e-12), name


def test_segmentation_equals_numpy_on_the_same_masks(evaluation, best, shapes_root):
    """The device confusion matrix against numpy, on the masks the shared postprocessing gives
    and the ground-truth PNGs read directly."""
    runner, cfg = load_runner(best)
    classes = runner.info.classes
    preds, truths = [], []
    for batch in build_data(cfg, classes=classes, train=False).val:
        for result in split_predictions(runner(batch.images), batch.meta):
            preds.append(result.mask)
            truths.append(np.asarray(Image.open(shapes_root / "val" / "masks" / (Path(result.meta["path"]).stem + ".png"))))
    assert all(p.shape == t.shape for p, t in zip(preds, truths))
    miou, per_class, fw_iou = numpy_segmentation(preds, truths, len(classes["segmentation"]))
    metrics = evaluation.metrics
    assert metrics["segmentation/mIoU"] == pytest.approx(miou, abs=1e-12)
    assert metrics["segmentation/fwIoU"] == pytest.approx(fw_iou, abs=1e-12)
    for c, iou in per_class.items():
        assert metrics[f"segmentation/IoU/{classes['segmentation'][c]}"] == pytest.approx(iou, abs=1e-12)


def test_export_tool_checks_the_graph_and_reports_each_output(exported):
    path, output = exported
    assert path.is_file() and "onnx.checker: ok" in output
    for name in ("cls_scores", "det_scores", "det_boxes", "det_unmatched", "seg_mask"):
        assert name in output, name


def test_evaluate_onnx_gives_the_checkpoints_metrics(exported, evaluation, tmp_path):
    path, _ = exported
    proc = run_tool("evaluate.py", "--weights", str(path), "--out", str(tmp_path / "onnx"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "onnx" / "detections.json").is_file()
    from_onnx = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    assert from_onnx.keys() == evaluation.metrics.keys()
    for key, value in evaluation.metrics.items():
        assert from_onnx[key] == pytest.approx(value, abs=0.002), key


def test_onnx_refuses_changed_model_settings(exported):
    """A graph has its thresholds built in: overriding them must not be silently ignored."""
    path, _ = exported
    with pytest.raises(ConfigError) as info:
        load_runner(path, overrides=["model.detection.score_thresh=0.5"])
    assert one_line(str(info.value)) and "model.detection.score_thresh" in str(info.value)


def test_export_tool_user_error_is_one_line(best, tmp_path):
    proc = run_tool("export_onnx.py", "--weights", str(best), "--out", str(tmp_path / "m.onnx"), "--imgsz", "100")
    assert_user_error(proc, "--imgsz=100", "multiple of 32")
    assert not (tmp_path / "m.onnx").exists()


def test_held_out_test_split_is_evaluated_after_training_and_by_evaluate(tiny_overrides, tmp_path):
    """With data.test, training ends by evaluating best.pt there (here the val files, so the figures must
    equal the best epoch's val metrics); evaluate.py --split test reads the same split; a config without
    data.test refuses --split test in one line."""
    val = "{format: files, images: val/images, annotations: val/annotations.json, masks: val/masks, labels: val/labels.csv}"
    proc = run_tool("train.py", *tiny_overrides, "train.epochs=1", f"run.dir={tmp_path}", "run.name=held",
                    f"data.test={val}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "held"
    assert "held-out data.test" in proc.stdout + proc.stderr
    test_metrics = json.loads((run / "eval" / "best_test" / "metrics.json").read_text())
    best_metrics = json.loads((run / "metrics.json").read_text())
    for key in ("classification/top1", "segmentation/mIoU", "detection/mAP50"):
        assert test_metrics[key] == pytest.approx(best_metrics[key], abs=1e-6), key
    again = evaluate_weights(run / "best.pt", progress=False, split="test")
    assert again.metrics["segmentation/mIoU"] == pytest.approx(test_metrics["segmentation/mIoU"], abs=1e-9)

    plain = tmp_path / "plain.pt"
    plain.write_bytes((run / "best.pt").read_bytes())
    proc = run_tool("evaluate.py", "--weights", str(plain), "--split", "test", "data.test=[]")
    assert_user_error(proc, "data.test lists no sources")
