"""Runs a model over a validation loader and computes every task's metrics."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from vision_mtl.utils.progress import progress

from vision_mtl.data.dataset import MultiTaskDataset
from vision_mtl.data.device_augment import to_float
from vision_mtl.engine.metrics import ClassificationMetric, DetectionMetric, SegmentationMetric
from vision_mtl.engine.results import split_predictions
from vision_mtl.models import MultiTaskModel


class Evaluator:
    """Metrics of a model on one split, with predictions mapped back to each image's original size.

    Detection is scored by pycocotools against the split's COCO ground truth, segmentation
    against the original mask files, classification against the loader's labels.
    """

    def __init__(self, loader: DataLoader, classes: dict[str, list[str]], multi_label: bool = False):
        self.loader = loader
        self.dataset: MultiTaskDataset = loader.dataset
        self.classes = classes
        self.multi_label = multi_label

    @torch.no_grad()
    def run(self, model: MultiTaskModel, device: torch.device, show_progress: bool = True) -> dict[str, float]:
        model.eval()
        metrics = self._new_metrics(model.tasks)
        for batch in progress(self.loader, desc="evaluate", leave=False, disable=not show_progress):
            batch = batch.to(device)
            images = to_float(batch.images)
            preds = model.predict(model(images), tuple(images.shape[-2:]))
            for i, result in enumerate(split_predictions(preds, batch.meta)):
                labelled = self.dataset.labelled_for(result.meta["index"])
                if "classification" in metrics and "classification" in labelled:
                    metrics["classification"].update(result, batch.targets["classification"]["labels"][i].cpu().numpy())
                if "detection" in metrics and "detection" in labelled:
                    metrics["detection"].update(result)
                if "segmentation" in metrics and "segmentation" in labelled:
                    metrics["segmentation"].update(result.mask, self.dataset.original_mask(result.meta["index"]))
        out: dict[str, float] = {}
        for metric in metrics.values():
            out.update(metric.compute())
        return out

    def _new_metrics(self, tasks: list[str]) -> dict:
        metrics = {}
        if "classification" in tasks:
            metrics["classification"] = ClassificationMetric(len(self.classes["classification"]), self.multi_label)
        ground_truth = self.dataset.detection_ground_truth() if "detection" in tasks else None
        if ground_truth is not None:
            metrics["detection"] = DetectionMetric(ground_truth.coco, ground_truth.category_ids, self.classes["detection"])
        if "segmentation" in tasks:
            metrics["segmentation"] = SegmentationMetric(self.classes["segmentation"])
        return metrics


PRIMARY_METRICS = ("classification/top1", "classification/f1", "detection/mAP", "segmentation/mIoU")


def primary_score(metrics: dict[str, float]) -> float:
    """One number to pick the best epoch: the mean of each task's headline metric."""
    values = [metrics[k] for k in PRIMARY_METRICS if k in metrics]
    return sum(values) / len(values) if values else 0.0
