"""Metric accumulators against direct computations: pycocotools, numpy confusion matrices, argmax."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vision_mtl.engine.evaluator import primary_score
from vision_mtl.engine.metrics import ClassificationMetric, DetectionMetric, SegmentationMetric
from vision_mtl.engine.results import ImageResult

# two images, non-contiguous category ids (contiguous class i <-> category_ids[i])
CATEGORY_IDS = [3, 7]
CLASS_NAMES = ["cat", "dog"]
GT = {  # image_id -> [(x1, y1, x2, y2, class index)]
    1: [(10, 10, 50, 60, 0), (60, 20, 90, 40, 1)],
    2: [(5, 5, 35, 35, 1), (40, 40, 95, 95, 0), (0, 60, 20, 90, 1)],
}


def coco_dataset() -> dict:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in GT]
    annotations = []
    for image_id, boxes in GT.items():
        for x1, y1, x2, y2, c in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[c],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections(shift: float = 0.0, drop: int = 0, rng_scores: bool = False):
    """Per-image results built from the ground truth, optionally shifted, with the last ``drop`` boxes removed."""
    rng = np.random.default_rng(0)
    results = []
    for image_id, boxes in GT.items():
        kept = boxes[: len(boxes) - drop] if drop else boxes
        xyxy = np.array([b[:4] for b in kept], np.float32) + shift
        scores = rng.uniform(0.2, 1.0, len(kept)) if rng_scores else np.ones(len(kept))
        results.append(ImageResult(meta={"image_id": image_id}, boxes=xyxy, scores=scores.astype(np.float32),
                                   labels=np.array([b[4] for b in kept])))
    return results


def metric_of(results) -> dict[str, float]:
    metric = DetectionMetric(coco_dataset(), CATEGORY_IDS, CLASS_NAMES)
    for result in results:
        metric.update(result)
    return metric.compute()


def direct_cocoeval(results) -> np.ndarray:
    """COCOeval on the same boxes, without vision_mtl in between."""
    dets = []
    for r in results:
        for (x1, y1, x2, y2), s, c in zip(r.boxes, r.scores, r.labels):
            dets.append({"image_id": r.meta["image_id"], "category_id": CATEGORY_IDS[int(c)],
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_dataset()
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_detection_perfect_boxes_give_map_one():
    out = metric_of(detections())
    assert out["detection/mAP"] == pytest.approx(1.0)
    assert out["detection/mAP50"] == pytest.approx(1.0)
    assert out["detection/mAP75"] == pytest.approx(1.0)
    assert out["detection/AP/cat"] == pytest.approx(1.0) and out["detection/AP/dog"] == pytest.approx(1.0)


def test_detection_shifted_boxes_score_lower():
    perfect = metric_of(detections())["detection/mAP"]
    small = metric_of(detections(shift=3.0))["detection/mAP"]
    large = metric_of(detections(shift=12.0))["detection/mAP"]
    assert large < small < perfect


@pytest.mark.parametrize("kwargs", [dict(), dict(shift=3.0), dict(shift=6.0, rng_scores=True), dict(drop=1)])
def test_detection_matches_cocoeval_run_directly(kwargs):
    results = detections(**kwargs)
    out = metric_of(copy.deepcopy(results))
    stats = direct_cocoeval(results)
    names = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")
    for name, value in zip(names, stats):
        if value < 0:
            assert f"detection/{name}" not in out  # COCOeval's -1 (no such objects) is left out
        else:
            assert out[f"detection/{name}"] == pytest.approx(value, abs=1e-12)


def test_detection_maps_class_indices_to_category_ids():
    """A detection labelled with the wrong contiguous class must not match: ids are translated."""
    results = detections()
    for r in results:
        r.labels = 1 - r.labels
    assert metric_of(results)["detection/mAP"] == pytest.approx(0.0)


def test_detection_without_any_detection_is_zero_and_without_images_is_empty():
    empty = [ImageResult(meta={"image_id": i}, boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0),
                         labels=np.zeros(0, np.int64)) for i in GT]
    out = metric_of(empty)
    assert out["detection/mAP"] == 0.0 and out["detection/mAP50"] == 0.0
    assert metric_of([]) == {}


def test_detection_only_scores_the_images_it_saw():
    """Evaluating on image 1 alone must not count image 2's objects as misses."""
    out = metric_of(detections()[:1])
    assert out["detection/mAP"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ segmentation

def numpy_miou(preds, truths, num_classes: int, ignore: int = 255):
    ious = []
    for c in range(num_classes):
        inter = union = gt_count = 0
        for p, t in zip(preds, truths):
            keep = t != ignore
            inter += np.sum((p == c) & (t == c) & keep)
            union += np.sum(((p == c) | (t == c)) & keep)
            gt_count += np.sum((t == c) & keep)
        if gt_count:
            ious.append(inter / union)
    return float(np.mean(ious)), ious


def test_segmentation_miou_matches_numpy_with_ignore_pixels():
    rng = np.random.default_rng(0)
    preds, truths = [], []
    for _ in range(3):
        truth = rng.integers(0, 3, (20, 30))  # class 3 never appears in the ground truth
        truth[rng.random((20, 30)) < 0.2] = 255
        pred = rng.integers(0, 4, (20, 30))  # but is predicted
        preds.append(pred)
        truths.append(truth)
    metric = SegmentationMetric(["a", "b", "c", "d"])
    for p, t in zip(preds, truths):
        metric.update(p, t)
    out = metric.compute()
    expected, per_class = numpy_miou(preds, truths, 4)
    assert out["segmentation/mIoU"] == pytest.approx(expected, abs=1e-12)
    for name, iou in zip("abc", per_class):
        assert out[f"segmentation/IoU/{name}"] == pytest.approx(iou, abs=1e-12)
    assert "segmentation/IoU/d" not in out  # absent from the ground truth -> not part of the mean
    keep = np.concatenate([t.ravel() for t in truths]) != 255
    acc = np.mean(np.concatenate([p.ravel() for p in preds])[keep] == np.concatenate([t.ravel() for t in truths])[keep])
    assert out["segmentation/pixel_acc"] == pytest.approx(acc, abs=1e-12)


def test_segmentation_perfect_prediction_and_ignored_pixels():
    truth = np.array([[0, 1, 255], [2, 2, 255]])
    pred = np.array([[0, 1, 0], [2, 2, 1]])  # wrong only where ignored
    metric = SegmentationMetric(["a", "b", "c"])
    metric.update(pred, truth)
    assert metric.compute()["segmentation/mIoU"] == pytest.approx(1.0)
    assert SegmentationMetric(["a"]).compute() == {}


# ---------------------------------------------------------------------------------- classification

def test_classification_top1_on_known_scores():
    metric = ClassificationMetric(3)
    scores = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]
    targets = [0, 2, 0, 1]  # right, right, wrong, wrong
    for s, t in zip(scores, targets):
        metric.update(ImageResult(class_scores=np.array(s)), t)
    out = metric.compute()
    assert out == {"classification/top1": pytest.approx(0.5)}


def test_classification_top5_only_with_more_than_five_classes():
    metric = ClassificationMetric(7)
    scores = np.array([0.3, 0.25, 0.2, 0.1, 0.08, 0.05, 0.02])
    metric.update(ImageResult(class_scores=scores), 4)  # 5th best: top-5 hit, top-1 miss
    metric.update(ImageResult(class_scores=scores), 6)  # last: miss
    out = metric.compute()
    assert out["classification/top1"] == 0.0
    assert out["classification/top5"] == pytest.approx(0.5)


def test_classification_multi_label_micro_f1():
    metric = ClassificationMetric(3, multi_label=True)
    metric.update(ImageResult(class_scores=np.array([0.9, 0.6, 0.1])), np.array([1.0, 0.0, 1.0]))  # tp1 fp1 fn1
    metric.update(ImageResult(class_scores=np.array([0.2, 0.8, 0.7])), np.array([0.0, 1.0, 1.0]))  # tp2
    out = metric.compute()
    assert out == {"classification/f1": pytest.approx(2 * 3 / (2 * 3 + 1 + 1))}
    assert ClassificationMetric(3).compute() == {}


def test_primary_score_is_the_mean_of_headline_metrics():
    metrics = {"classification/top1": 0.5, "detection/mAP": 0.2, "detection/mAP50": 0.9, "segmentation/mIoU": 0.8}
    assert primary_score(metrics) == pytest.approx((0.5 + 0.2 + 0.8) / 3)
    assert primary_score({}) == 0.0
