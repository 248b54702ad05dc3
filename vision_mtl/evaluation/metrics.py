"""Metric accumulators, one per task, giving ``task/metric`` keys.

Memory stays bounded on any validation set: segmentation keeps one KxK confusion matrix on the
device, detection keeps the (COCO-sized) result list COCOeval needs, classification keeps counts,
or for multi-label the [N, C] scores that average precision needs (4 bytes a class an image).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vision_mtl.data.sample import IGNORE_INDEX
from vision_mtl.engine.results import ImageResult, coco_detections

COCO_STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


class ClassificationMetric:
    """Multi-class: top-1 and top-5 accuracy (top-5 only with more than five classes).
    Multi-label: mAP (mean over classes with a positive of the average precision), per-class AP,
    and micro F1 with a class predicted when its score is >= ``threshold``."""

    def __init__(self, class_names: list[str], multi_label: bool = False, threshold: float = 0.5):
        self.class_names = class_names
        self.multi_label = multi_label
        self.threshold = threshold
        self.count = self.top1 = self.top5 = 0
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """``scores`` [n, C]; ``targets`` class indices [n] or multi-hot [n, C]."""
        scores, targets = scores.detach().float().cpu(), targets.cpu()
        self.count += len(scores)
        if self.multi_label:
            self.scores.append(scores)
            self.targets.append(targets > 0.5)
            return
        ranked = scores.topk(min(5, scores.shape[1]), dim=1).indices
        self.top1 += int((ranked[:, 0] == targets).sum())
        self.top5 += int((ranked == targets.unsqueeze(1)).any(dim=1).sum())

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        if self.multi_label:
            return self._multi_label()
        out = {"classification/top1": self.top1 / self.count}
        if len(self.class_names) > 5:
            out["classification/top5"] = self.top5 / self.count
        return out

    def _multi_label(self) -> dict[str, float]:
        scores, truth = torch.cat(self.scores).numpy(), torch.cat(self.targets).numpy()
        pred = scores >= self.threshold
        true_pos = int((pred & truth).sum())
        wrong = int((pred != truth).sum())
        out = {"classification/f1": 2 * true_pos / max(1, 2 * true_pos + wrong)}
        ap = {name: average_precision(scores[:, c], truth[:, c]) for c, name in enumerate(self.class_names)
              if truth[:, c].any()}  # AP is undefined for a class without positives
        if ap:
            out["classification/mAP"] = float(np.mean(list(ap.values())))
            out.update({f"classification/AP/{name}": value for name, value in ap.items()})
        return out


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the step precision-recall curve, one step per distinct score (tied scores form
    one threshold): sum over thresholds of (recall gain) x precision. The definition scikit-learn's
    ``average_precision_score`` uses, in a few lines instead of a dependency."""
    order = np.argsort(-scores, kind="stable")
    scores, truth = scores[order], truth[order].astype(np.float64)
    last_of_threshold = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_pos = np.cumsum(truth)[last_of_threshold]
    precision = true_pos / (last_of_threshold + 1)
    recall = true_pos / truth.sum()
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


class SegmentationMetric:
    """mIoU, per-class IoU, pixel accuracy and frequency-weighted IoU from one confusion matrix,
    accumulated with ``torch.bincount`` on the device the masks are on."""

    def __init__(self, class_names: list[str], ignore_index: int = IGNORE_INDEX):
        self.class_names = class_names
        self.ignore_index = ignore_index
        self.confusion: torch.Tensor | None = None  # [truth, prediction], created on the first update's device

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred`` and ``target``: [H, W] class ids at the same (original) size, on one device."""
        num = len(self.class_names)
        truth, guess = target.flatten().long(), pred.flatten().long()
        keep = (truth != self.ignore_index) & (truth < num)
        counts = torch.bincount(truth[keep] * num + guess[keep], minlength=num * num).view(num, num)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def compute(self) -> dict[str, float]:
        if self.confusion is None or self.confusion.sum() == 0:
            return {}
        conf = self.confusion.double().cpu()
        true_pos = conf.diag()
        truth_count = conf.sum(1)
        union = conf.sum(0) + truth_count - true_pos
        present = truth_count > 0  # classes absent from the ground truth do not count in the mean
        iou = true_pos / union.clamp(min=1)
        frequency = truth_count / truth_count.sum()
        out = {
            "segmentation/mIoU": float(iou[present].mean()),
            "segmentation/pixel_acc": float(true_pos.sum() / conf.sum()),
            "segmentation/fwIoU": float((frequency * iou).sum()),
        }
        out.update({f"segmentation/IoU/{name}": float(iou[i]) for i, name in enumerate(self.class_names) if present[i]})
        return out


class DetectionMetric:
    """COCO box mAP computed by pycocotools' COCOeval against the split's own COCO ground truth.

    ``category_ids[i]`` is the ground truth's category id of class ``i``; ``detections`` holds the
    COCO results entries (what ``COCO.loadRes`` reads), written out by the evaluation tool.
    """

    def __init__(self, coco_dataset: dict, category_ids: list[int], class_names: list[str]):
        self.gt = _quiet_coco(coco_dataset)
        self.category_ids = category_ids
        self.class_names = class_names
        self.detections: list[dict] = []
        self.image_ids: list[int] = []

    def update(self, result: ImageResult) -> None:
        self.image_ids.append(result.meta["image_id"])
        self.detections.extend(coco_detections(result, self.category_ids))

    def compute(self) -> dict[str, float]:
        if not self.image_ids:
            return {}
        if not self.detections:
            return {f"detection/{name}": 0.0 for name in COCO_STAT_NAMES}
        with contextlib.redirect_stdout(io.StringIO()):
            dt = self.gt.loadRes([dict(d) for d in self.detections])  # loadRes adds keys in place
            evaluator = COCOeval(self.gt, dt, iouType="bbox")
            evaluator.params.imgIds = sorted(set(self.image_ids))
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        # COCOeval reports -1 where a statistic has no ground truth (e.g. no small objects): leave it out
        out = {f"detection/{name}": float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats) if v >= 0}
        precision = evaluator.eval["precision"]  # [T, R, K, A, M]
        category_index = {cat: k for k, cat in enumerate(evaluator.params.catIds)}
        for name, cat in zip(self.class_names, self.category_ids):
            p = precision[:, :, category_index[cat], 0, -1]
            if (p > -1).any():
                out[f"detection/AP/{name}"] = float(p[p > -1].mean())
        return out


def _quiet_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
