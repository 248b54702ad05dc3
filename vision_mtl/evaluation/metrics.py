"""Metric accumulators, one per task, giving ``task/metric`` keys.

Memory stays bounded on any validation set: segmentation keeps one KxK confusion matrix on the
device, detection keeps the (COCO-sized) result list COCOeval needs, classification keeps a CxC
confusion matrix, or for multi-label the [N, C] scores that average precision needs (4 bytes a
class an image).

Each accumulator has the same three calls: ``update`` per batch or image, ``sync`` to combine
the states of all ``torchrun`` processes (each saw a disjoint shard; a collective call, made by
every process), and ``compute``, which returns the metrics and leaves the data plots need
(arrays, not scalars) in ``self.curves``.
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
from vision_mtl.utils.distributed import Processes

COCO_STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


class ClassificationMetric:
    """Multi-class: top-1 and top-5 accuracy (top-5 only with more than five classes).
    Multi-label: mAP (mean over classes with a positive of the average precision), per-class AP,
    and micro F1 with a class predicted when its score is >= ``threshold``.

    curves (multi-class only): ``classification/confusion`` int64 [C, C] image counts, rows the
    true class, columns the top-1 prediction."""

    def __init__(self, class_names: list[str], multi_label: bool = False, threshold: float = 0.5):
        self.class_names = class_names
        self.multi_label = multi_label
        self.threshold = threshold
        num = len(class_names)
        self.confusion = torch.zeros(num, num, dtype=torch.int64)  # [truth, top-1 prediction]
        self.top5 = 0
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.curves: dict[str, np.ndarray] = {}

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """``scores`` [n, C]; ``targets`` class indices [n] or multi-hot [n, C]."""
        scores, targets = scores.detach().float().cpu(), targets.cpu()
        if self.multi_label:
            self.scores.append(scores)
            self.targets.append(targets > 0.5)
            return
        num = len(self.class_names)
        ranked = scores.topk(min(5, num), dim=1).indices
        self.confusion += torch.bincount(targets.long() * num + ranked[:, 0], minlength=num * num).view(num, num)
        self.top5 += int((ranked == targets.unsqueeze(1)).any(dim=1).sum())

    def sync(self, processes: Processes) -> None:
        """Sum the counts of every process (multi-label: gather the scores). Collective."""
        if self.multi_label:
            parts = processes.gather((self.scores, self.targets))
            self.scores = [s for scores, _ in parts for s in scores]
            self.targets = [t for _, targets in parts for t in targets]
            return
        summed = processes.sum([*self.confusion.flatten().tolist(), self.top5])
        self.confusion = torch.tensor(summed[:-1], dtype=torch.int64).view_as(self.confusion)
        self.top5 = int(summed[-1])

    def compute(self) -> dict[str, float]:
        if self.multi_label:
            return self._multi_label() if self.scores else {}
        count = int(self.confusion.sum())
        if count == 0:
            return {}
        self.curves = {"classification/confusion": self.confusion.numpy().copy()}
        out = {"classification/top1": int(self.confusion.trace()) / count}
        if len(self.class_names) > 5:
            out["classification/top5"] = self.top5 / count
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
    accumulated with ``torch.bincount`` on the device the masks are on.

    curves: ``segmentation/iou`` float64 [K], NaN for a class absent from the ground truth."""

    def __init__(self, class_names: list[str], ignore_index: int = IGNORE_INDEX):
        self.class_names = class_names
        self.ignore_index = ignore_index
        self.confusion: torch.Tensor | None = None  # [truth, prediction], created on the first update's device
        self.curves: dict[str, np.ndarray] = {}

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred`` and ``target``: [H, W] class ids at the same (original) size, on one device."""
        num = len(self.class_names)
        truth, guess = target.flatten().long(), pred.flatten().long()
        keep = (truth != self.ignore_index) & (truth < num)
        counts = torch.bincount(truth[keep] * num + guess[keep], minlength=num * num).view(num, num)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def sync(self, processes: Processes) -> None:
        """Sum the confusion matrices of every process (on the CPU; exact below 2**53 pixels). Collective."""
        num = len(self.class_names)
        local = self.confusion.cpu() if self.confusion is not None else torch.zeros(num, num, dtype=torch.int64)
        self.confusion = torch.tensor(processes.sum(local.flatten().tolist()), dtype=torch.int64).view(num, num)

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
        self.curves = {"segmentation/iou": torch.where(present, iou, torch.nan).numpy()}
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

    curves: the precision-recall curves at IoU 0.5 (area all, 100 detections an image) that
    COCOeval's AP50 averages: ``detection/recall`` [101] (0 to 1), ``detection/precision``
    [K, 101] per class (NaN for a class without ground truth) and ``detection/precision_mean``
    [101] over the classes with ground truth; the mean of that last curve is AP50.
    """

    def __init__(self, coco_dataset: dict, category_ids: list[int], class_names: list[str]):
        self.gt = _quiet_coco(coco_dataset)
        self.category_ids = category_ids
        self.class_names = class_names
        self.detections: list[dict] = []
        self.image_ids: list[int] = []
        self.curves: dict[str, np.ndarray] = {}

    def update(self, result: ImageResult) -> None:
        self.image_ids.append(result.meta["image_id"])
        self.detections.extend(coco_detections(result, self.category_ids))

    def sync(self, processes: Processes) -> None:
        """Gather every process's images and detections, in the ground truth's image order (the
        order one process evaluating the whole split gives). Collective."""
        parts = processes.gather((self.image_ids, self.detections))
        position = {image["id"]: i for i, image in enumerate(self.gt.dataset["images"])}
        self.image_ids = sorted((i for ids, _ in parts for i in ids), key=position.__getitem__)
        self.detections = sorted((d for _, dets in parts for d in dets), key=lambda d: position[d["image_id"]])

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
        self.curves = _pr_curves(evaluator, [category_index[cat] for cat in self.category_ids])
        return out


def _pr_curves(evaluator: COCOeval, columns: list[int]) -> dict[str, np.ndarray]:
    """The IoU 0.5 precision-recall curves of the model's classes (``columns`` of COCOeval's
    category axis), the ones AP50 is the mean of; empty when no class has ground truth."""
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # [R, all categories]
    per_class = precision[:, columns].T.astype(np.float64)  # [K, R]
    per_class[per_class < 0] = np.nan  # COCOeval's -1: no ground truth for the class
    with_truth = ~np.isnan(per_class).any(axis=1)
    if not with_truth.any():
        return {}
    return {"detection/recall": np.asarray(evaluator.params.recThrs, np.float64), "detection/precision": per_class,
            "detection/precision_mean": per_class[with_truth].mean(axis=0)}


def _quiet_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
