"""Metric accumulators, one per task, fed per-image results and giving ``task/metric`` keys."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vision_mtl.data.sample import IGNORE_INDEX
from vision_mtl.engine.results import ImageResult

COCO_STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


class ClassificationMetric:
    """Top-1 / top-5 accuracy for multi-class labels; micro F1 at 0.5 for multi-label."""

    def __init__(self, num_classes: int, multi_label: bool = False):
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.count = 0
        self.top1 = 0
        self.top5 = 0
        self.true_pos = self.false_pos = self.false_neg = 0

    def update(self, result: ImageResult, target: int | np.ndarray) -> None:
        scores = result.class_scores
        self.count += 1
        if self.multi_label:
            pred, truth = scores >= 0.5, np.asarray(target) > 0.5
            self.true_pos += int((pred & truth).sum())
            self.false_pos += int((pred & ~truth).sum())
            self.false_neg += int((~pred & truth).sum())
            return
        ranked = np.argsort(-scores)
        self.top1 += int(ranked[0] == target)
        self.top5 += int(target in ranked[:5])

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        if self.multi_label:
            return {"classification/f1": 2 * self.true_pos / max(1, 2 * self.true_pos + self.false_pos + self.false_neg)}
        out = {"classification/top1": self.top1 / self.count}
        if self.num_classes > 5:
            out["classification/top5"] = self.top5 / self.count
        return out


class SegmentationMetric:
    """mIoU, per-class IoU and pixel accuracy from one confusion matrix over all images."""

    def __init__(self, class_names: list[str], ignore_index: int = IGNORE_INDEX):
        self.class_names = class_names
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(len(class_names), len(class_names), dtype=torch.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """``pred`` and ``target``: HxW class ids at the same (original) size."""
        truth = torch.from_numpy(np.asarray(target, dtype=np.int64)).flatten()
        guess = torch.from_numpy(np.asarray(pred, dtype=np.int64)).flatten()
        num = len(self.class_names)
        keep = (truth != self.ignore_index) & (truth < num)
        self.confusion += torch.bincount(truth[keep] * num + guess[keep], minlength=num * num).view(num, num)

    def compute(self) -> dict[str, float]:
        conf = self.confusion.double()
        if conf.sum() == 0:
            return {}
        true_pos = conf.diag()
        union = conf.sum(0) + conf.sum(1) - true_pos
        present = conf.sum(1) > 0  # classes absent from the ground truth do not count in the mean
        iou = true_pos / union.clamp(min=1)
        out = {"segmentation/mIoU": float(iou[present].mean()), "segmentation/pixel_acc": float(true_pos.sum() / conf.sum())}
        out.update({f"segmentation/IoU/{name}": float(iou[i]) for i, name in enumerate(self.class_names) if present[i]})
        return out


class DetectionMetric:
    """COCO box mAP computed by pycocotools' COCOeval against the split's own COCO ground truth."""

    def __init__(self, coco_dataset: dict, category_ids: list[int], class_names: list[str]):
        self.gt = _quiet_coco(coco_dataset)
        self.category_ids = category_ids
        self.class_names = class_names
        self.detections: list[dict] = []
        self.image_ids: list[int] = []

    def update(self, result: ImageResult) -> None:
        image_id = result.meta["image_id"]
        self.image_ids.append(image_id)
        for box, score, label in zip(result.boxes, result.scores, result.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            self.detections.append({"image_id": image_id, "category_id": self.category_ids[int(label)],
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})

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
        for k, name in enumerate(self.class_names):
            p = precision[:, :, k, 0, -1]
            if (p > -1).any():
                out[f"detection/AP/{name}"] = float(p[p > -1].mean())
        return out


def _quiet_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
