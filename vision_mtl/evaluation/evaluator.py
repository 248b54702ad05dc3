"""Runs a model (any runner: PyTorch or ONNX) over a validation loader and computes every task's metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from vision_mtl.data.dataset import MultiTaskDataset
from vision_mtl.data.sample import IGNORE_INDEX, Batch
from vision_mtl.evaluation.metrics import ClassificationMetric, DetectionMetric, SegmentationMetric
from vision_mtl.engine.results import Predictions, restore_mask, split_predictions
from vision_mtl.engine.runners import Runner
from vision_mtl.errors import DataError
from vision_mtl.utils.progress import progress


@dataclass
class Evaluation:
    """Metrics under ``task/metric`` keys, and the detections as COCO results entries (original
    image and category ids, loadable by ``COCO.loadRes``), None without detection ground truth."""

    metrics: dict[str, float]
    detections: list[dict] | None


class Evaluator:
    """Metrics of a model on one split, with predictions mapped back to each image's original size.

    Detection is scored by pycocotools against the split's COCO ground truth, segmentation
    against the original mask files, classification against the loader's labels; an image counts
    for a task only when it is labelled for it.
    """

    def __init__(self, loader: DataLoader, classes: dict[str, list[str]], multi_label: bool = False,
                 threshold: float = 0.5, ignore_index: int = IGNORE_INDEX):
        self.loader = loader
        self.dataset: MultiTaskDataset = loader.dataset
        self.classes = classes
        self.multi_label = multi_label
        self.threshold = threshold
        self.ignore_index = ignore_index

    def run(self, runner: Runner, show_progress: bool = True) -> Evaluation:
        metrics = self._new_metrics(runner.tasks)
        for batch in progress(self.loader, desc="evaluate", leave=False, disable=not show_progress):
            self._update(metrics, runner(batch.images), batch)
        out: dict[str, float] = {}
        for metric in metrics.values():
            out.update(metric.compute())
        detection = metrics.get("detection")
        return Evaluation(out, detection.detections if detection is not None else None)

    def _update(self, metrics: dict, preds: Predictions, batch: Batch) -> None:
        labelled = [self.dataset.labelled_for(meta["index"]) for meta in batch.meta]
        if "classification" in metrics:
            rows = torch.tensor([i for i, tasks in enumerate(labelled) if "classification" in tasks], dtype=torch.long)
            metrics["classification"].update(preds["classification"]["scores"].cpu()[rows],
                                             batch.targets["classification"]["labels"][rows])
        if "detection" in metrics:
            for result, tasks in zip(split_predictions({"detection": preds["detection"]}, batch.meta), labelled):
                if "detection" in tasks:
                    metrics["detection"].update(result)
        if "segmentation" in metrics:
            masks = preds["segmentation"]["mask"]
            for mask, meta, tasks in zip(masks, batch.meta, labelled):
                if "segmentation" in tasks:
                    truth = torch.tensor(self.dataset.original_mask(meta["index"]), device=masks.device)
                    metrics["segmentation"].update(restore_mask(mask, meta), truth)

    def _new_metrics(self, tasks: list[str]) -> dict:
        metrics = {}
        if "classification" in tasks:
            metrics["classification"] = ClassificationMetric(self.classes["classification"], self.multi_label,
                                                             self.threshold)
        ground_truth = self.dataset.detection_ground_truth() if "detection" in tasks else None
        if ground_truth is not None:
            names = self.classes["detection"]
            metrics["detection"] = DetectionMetric(ground_truth.coco, category_ids_by_name(ground_truth.coco, names),
                                                   names)
        if "segmentation" in tasks:
            metrics["segmentation"] = SegmentationMetric(self.classes["segmentation"], self.ignore_index)
        return metrics


def category_ids_by_name(coco: dict, class_names: list[str]) -> list[int]:
    """The ground truth's category id of each model class, matched by name: the split's own id
    order need not be the training split's."""
    ids = {c["name"]: c["id"] for c in coco["categories"]}
    missing = [n for n in class_names if n not in ids]
    if missing:
        raise DataError(f"detection class '{missing[0]}' of the model is not a category of the evaluation "
                        f"annotations (they have {', '.join(sorted(ids)) or 'none'}); evaluate on data with the model's classes")
    return [ids[n] for n in class_names]


PRIMARY_METRICS = ("classification/top1", "classification/f1", "detection/mAP", "segmentation/mIoU")


def primary_score(metrics: dict[str, float]) -> float:
    """One number to pick the best epoch: the mean of each task's headline metric."""
    values = [metrics[k] for k in PRIMARY_METRICS if k in metrics]
    return sum(values) / len(values) if values else 0.0
