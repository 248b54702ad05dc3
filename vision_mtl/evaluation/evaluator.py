"""Runs a model (any runner: PyTorch or ONNX) over a validation loader and computes every task's metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from vision_mtl.data.dataset import MultiTaskDataset
from vision_mtl.data.sample import IGNORE_INDEX, Batch
from vision_mtl.evaluation.metrics import ClassificationMetric, DetectionMetric, SegmentationMetric
from vision_mtl.engine.results import ImageResult, Predictions, restore_mask, split_predictions
from vision_mtl.engine.runners import Runner
from vision_mtl.errors import DataError
from vision_mtl.utils.distributed import Processes
from vision_mtl.utils.progress import progress


@dataclass
class Example:
    """One validation image for a picture grid: the network's input with the letterbox padding
    cropped off (HxWx3 uint8 RGB, the longer side ``data.image_size``) and the model's predictions
    in those same pixels (``result.meta`` keeps the image's path and index, with scale 1)."""

    image: np.ndarray
    result: ImageResult


@dataclass
class Evaluation:
    """Metrics under ``task/metric`` keys, and the detections as COCO results entries (original
    image and category ids, loadable by ``COCO.loadRes``), None without detection ground truth.

    ``curves``: plot data (numpy arrays) under ``task/name`` keys, each documented on its metric
    class in :mod:`vision_mtl.evaluation.metrics`: ``classification/confusion``,
    ``detection/recall``, ``detection/precision``, ``detection/precision_mean``,
    ``segmentation/iou``. ``examples``: the first images of the split, when asked for.
    """

    metrics: dict[str, float]
    detections: list[dict] | None
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)


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
        self._shards: dict[tuple[int, int], DataLoader] = {}

    def run(self, runner: Runner, show_progress: bool = True, processes: Processes | None = None,
            examples: int = 0) -> Evaluation:
        """Evaluate ``runner`` on the whole split and return the metrics, curves and ``examples``
        :class:`Example` images (the split's first ones, in order).

        With ``processes.world > 1`` (torchrun) every process must call this: each runs the model
        on its shard (images rank, rank + world, ...: each image exactly once), the metric states
        are then combined, and every process returns the same :class:`Evaluation`, equal to one
        process evaluating the whole split. Only the main process shows a progress bar.
        """
        processes = processes or Processes()
        metrics = self._new_metrics(runner.tasks)
        wanted = len(range(processes.rank, examples, processes.world))  # this shard's part of the first images
        kept: list[Example] = []
        loader = self._loader_for(processes)
        for batch in progress(loader, desc="evaluate", leave=False, disable=not (show_progress and processes.main)):
            preds = runner(batch.images)
            self._update(metrics, preds, batch)
            if len(kept) < wanted:
                kept += self._examples(preds, batch, wanted - len(kept))
        if processes.world > 1:
            for metric in metrics.values():
                metric.sync(processes)
            if examples:
                kept = sorted((e for part in processes.gather(kept) for e in part), key=lambda e: e.result.meta["index"])
        out: dict[str, float] = {}
        curves: dict[str, np.ndarray] = {}
        for metric in metrics.values():
            out.update(metric.compute())
            curves.update(metric.curves)
        detection = metrics.get("detection")
        return Evaluation(out, detection.detections if detection is not None else None, curves, kept)

    def _loader_for(self, processes: Processes) -> DataLoader:
        if processes.world == 1:
            return self.loader
        key = (processes.rank, processes.world)
        if key not in self._shards:
            self._shards[key] = shard_loader(self.loader, *key)
        return self._shards[key]

    def _examples(self, preds: Predictions, batch: Batch, count: int) -> list[Example]:
        """The batch's first ``count`` images at network resolution with their predictions: the
        letterbox is undone with a scale of 1, which only crops the padding."""
        height, width = batch.images.shape[-2:]
        metas = [{**meta, "scale": 1.0, "orig_size": (min(height, round(meta["orig_size"][0] * meta["scale"])),
                                                     min(width, round(meta["orig_size"][1] * meta["scale"])))}
                 for meta in batch.meta[:count]]
        kept = []
        for i, result in enumerate(split_predictions(preds, metas)):
            result.classes = self.classes
            h, w = result.meta["orig_size"]
            kept.append(Example(batch.images[i, :, :h, :w].permute(1, 2, 0).cpu().numpy().copy(), result))
        return kept

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


def shard_loader(loader: DataLoader, rank: int, world: int) -> DataLoader:
    """``loader`` (in-order, unsharded) restricted to images rank, rank + world, ...: every image on
    exactly one process, unlike DistributedSampler, which repeats images to even the shards out."""
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=range(rank, len(loader.dataset), world),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
                      prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)


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
