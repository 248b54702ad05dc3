"""Metric accumulators against direct computations: pycocotools, numpy confusion matrices, argmax."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import torch

from vision_mtl.evaluation.evaluator import category_ids_by_name, primary_score
from vision_mtl.evaluation.metrics import ClassificationMetric, DetectionMetric, SegmentationMetric, average_precision
from vision_mtl.engine.results import ImageResult
from vision_mtl.errors import DataError

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


def test_detection_category_ids_by_name_ignore_the_id_order():
    coco = coco_dataset()
    assert category_ids_by_name(coco, ["dog", "cat"]) == [7, 3]
    with pytest.raises(DataError) as info:
        category_ids_by_name(coco, ["cat", "horse"])
    assert "horse" in str(info.value) and "\n" not in str(info.value)


def test_detection_per_class_ap_follows_category_ids_not_positions():
    """Class order unlike the ground truth's id order: per-class AP must still land on the right name."""
    results = detections()
    for r in results:
        keep = r.labels == 0  # only cats detected
        r.boxes, r.scores, r.labels = r.boxes[keep], r.scores[keep], 1 - r.labels[keep]  # cat is class 1 below
    metric = DetectionMetric(coco_dataset(), [7, 3], ["dog", "cat"])
    for r in results:
        metric.update(r)
    out = metric.compute()
    assert out["detection/AP/cat"] == pytest.approx(1.0) and out["detection/AP/dog"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------------ segmentation

def numpy_segmentation(preds, truths, num_classes: int, ignore: int = 255):
    """mIoU over classes present in the truth, per-class IoU, fwIoU, straight from the definitions."""
    ious, freqs = {}, {}
    labelled = sum(np.sum(t != ignore) for t in truths)
    for c in range(num_classes):
        inter = union = gt_count = 0
        for p, t in zip(preds, truths):
            keep = t != ignore
            inter += np.sum((p == c) & (t == c) & keep)
            union += np.sum(((p == c) | (t == c)) & keep)
            gt_count += np.sum((t == c) & keep)
        if gt_count:
            ious[c], freqs[c] = inter / union, gt_count / labelled
    return float(np.mean(list(ious.values()))), ious, float(sum(freqs[c] * ious[c] for c in ious))


def test_segmentation_matches_numpy_with_ignore_pixels():
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
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
    out = metric.compute()
    expected, per_class, fw = numpy_segmentation(preds, truths, 4)
    assert out["segmentation/mIoU"] == pytest.approx(expected, abs=1e-12)
    assert out["segmentation/fwIoU"] == pytest.approx(fw, abs=1e-12)
    for c, name in enumerate("abc"):
        assert out[f"segmentation/IoU/{name}"] == pytest.approx(per_class[c], abs=1e-12)
    assert "segmentation/IoU/d" not in out  # absent from the ground truth -> not part of the mean
    keep = np.concatenate([t.ravel() for t in truths]) != 255
    acc = np.mean(np.concatenate([p.ravel() for p in preds])[keep] == np.concatenate([t.ravel() for t in truths])[keep])
    assert out["segmentation/pixel_acc"] == pytest.approx(acc, abs=1e-12)


def test_segmentation_perfect_prediction_and_ignored_pixels():
    truth = torch.tensor([[0, 1, 255], [2, 2, 255]])
    pred = torch.tensor([[0, 1, 0], [2, 2, 1]])  # wrong only where ignored
    metric = SegmentationMetric(["a", "b", "c"])
    metric.update(pred, truth)
    out = metric.compute()
    assert out["segmentation/mIoU"] == pytest.approx(1.0) and out["segmentation/fwIoU"] == pytest.approx(1.0)
    assert SegmentationMetric(["a"]).compute() == {}


def test_segmentation_respects_a_custom_ignore_index():
    truth = torch.tensor([[0, 1, 7]])
    pred = torch.tensor([[0, 1, 0]])
    assert SegmentationMetric(["a", "b"], ignore_index=7).compute() == {}
    metric = SegmentationMetric(["a", "b"], ignore_index=7)
    metric.update(pred, truth)
    assert metric.compute()["segmentation/pixel_acc"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------- classification

def test_classification_top1_on_known_scores():
    metric = ClassificationMetric(["a", "b", "c"])
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    metric.update(scores[:3], torch.tensor([0, 2, 0]))  # right, right, wrong
    metric.update(scores[3:], torch.tensor([1]))  # wrong
    assert metric.compute() == {"classification/top1": pytest.approx(0.5)}


def test_classification_top5_only_with_more_than_five_classes():
    metric = ClassificationMetric(list("abcdefg"))
    scores = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.08, 0.05, 0.02]).repeat(2, 1)
    metric.update(scores, torch.tensor([4, 6]))  # 5th best: top-5 hit, top-1 miss; last: miss
    out = metric.compute()
    assert out["classification/top1"] == 0.0
    assert out["classification/top5"] == pytest.approx(0.5)
    assert ClassificationMetric(["a", "b", "c"]).compute() == {}


def test_classification_multi_label_micro_f1_at_the_threshold():
    scores = torch.tensor([[0.9, 0.6, 0.1], [0.2, 0.8, 0.7]])
    truth = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    metric = ClassificationMetric(["a", "b", "c"], multi_label=True)
    metric.update(scores, truth)  # at 0.5: tp 3, fp 1, fn 1
    assert metric.compute()["classification/f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    strict = ClassificationMetric(["a", "b", "c"], multi_label=True, threshold=0.75)
    strict.update(scores, truth)  # at 0.75: tp 2 (0.9, 0.8), fp 0, fn 2
    assert strict.compute()["classification/f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))


def ap_by_definition(scores: np.ndarray, truth: np.ndarray) -> float:
    """Mean over positives of the precision at that positive's score (all images scoring at least as much)."""
    precisions = [np.sum(truth[scores >= s]) / np.sum(scores >= s) for s in scores[truth]]
    return float(np.mean(precisions))


@pytest.mark.parametrize("seed", range(4))
def test_average_precision_matches_its_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 40) / 5.0  # few distinct values: many ties
    truth = rng.random(40) < 0.4
    truth[0] = True
    assert average_precision(scores, truth) == pytest.approx(ap_by_definition(scores, truth), abs=1e-12)


def test_classification_multi_label_map_over_classes_with_positives():
    rng = np.random.default_rng(0)
    scores = rng.random((30, 4)).astype(np.float32)
    truth = rng.random((30, 4)) < 0.3
    truth[:, 3] = False  # no positive: AP undefined, left out of the mean
    metric = ClassificationMetric(["a", "b", "c", "d"], multi_label=True)
    metric.update(torch.from_numpy(scores[:10]), torch.from_numpy(truth[:10]).float())
    metric.update(torch.from_numpy(scores[10:]), torch.from_numpy(truth[10:]).float())
    out = metric.compute()
    per_class = [ap_by_definition(scores[:, c], truth[:, c]) for c in range(3)]
    assert out["classification/mAP"] == pytest.approx(np.mean(per_class), abs=1e-9)
    assert out["classification/AP/b"] == pytest.approx(per_class[1], abs=1e-9)
    assert "classification/AP/d" not in out
    perfect = ClassificationMetric(["a", "b"], multi_label=True)
    perfect.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert perfect.compute()["classification/mAP"] == pytest.approx(1.0)


def test_primary_score_is_the_mean_of_headline_metrics():
    metrics = {"classification/top1": 0.5, "detection/mAP": 0.2, "detection/mAP50": 0.9, "segmentation/mIoU": 0.8}
    assert primary_score(metrics) == pytest.approx((0.5 + 0.2 + 0.8) / 3)
    assert primary_score({}) == 0.0


# ----------------------------------------------------------------------------- curves (plot data)

@pytest.mark.parametrize("kwargs", [dict(), dict(shift=4.0, rng_scores=True), dict(shift=8.0, rng_scores=True, drop=1)])
def test_detection_pr_curves_average_to_cocoevals_ap50(kwargs):
    """Per-class precision at 101 recall points, IoU 0.5; their mean over recall and classes is AP50.
    A model class without ground truth has a NaN curve and stays out of the mean."""
    results = detections(**kwargs)
    dataset = coco_dataset()
    dataset["categories"].append({"id": 9, "name": "bird"})  # a category nothing is annotated with
    metric = DetectionMetric(dataset, [*CATEGORY_IDS, 9], [*CLASS_NAMES, "bird"])
    for result in copy.deepcopy(results):
        metric.update(result)
    out = metric.compute()
    curves = metric.curves
    np.testing.assert_allclose(curves["detection/recall"], np.linspace(0, 1, 101))
    assert curves["detection/precision"].shape == (3, 101) and curves["detection/precision_mean"].shape == (101,)
    assert np.isnan(curves["detection/precision"][2]).all() and not np.isnan(curves["detection/precision"][:2]).any()
    ap50 = direct_cocoeval(results)[1]
    assert out["detection/mAP50"] == pytest.approx(ap50, abs=1e-12)
    assert curves["detection/precision_mean"].mean() == pytest.approx(ap50, abs=1e-9)
    assert curves["detection/precision"][:2].mean() == pytest.approx(ap50, abs=1e-9)


def test_classification_confusion_curve_counts_truth_against_top1():
    metric = ClassificationMetric(["a", "b", "c"])
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    metric.update(scores, torch.tensor([0, 2, 0, 1]))
    metric.compute()
    np.testing.assert_array_equal(metric.curves["classification/confusion"], [[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    multi = ClassificationMetric(["a", "b"], multi_label=True)
    multi.update(torch.tensor([[0.9, 0.1]]), torch.tensor([[1.0, 0.0]]))
    multi.compute()
    assert multi.curves == {}  # no confusion matrix for multi-label


def test_segmentation_iou_curve_is_the_per_class_iou_with_nan_for_absent_classes():
    metric = SegmentationMetric(["a", "b", "c"])
    metric.update(torch.tensor([[0, 1, 1], [0, 0, 2]]), torch.tensor([[0, 1, 0], [0, 0, 1]]))
    out = metric.compute()
    iou = metric.curves["segmentation/iou"]
    assert iou.shape == (3,) and np.isnan(iou[2])
    assert iou[:2].tolist() == [out["segmentation/IoU/a"], out["segmentation/IoU/b"]]
