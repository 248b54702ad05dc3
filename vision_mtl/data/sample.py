"""The two data contracts: ``Sample`` (one image, numpy) and ``Batch`` (padded tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = 255
PAD_VALUE = 114  # the grey of letterbox padding


@dataclass
class Sample:
    """One image and whichever labels it carries; ``None`` means "not labelled for that task".

    image: HxWx3 uint8 RGB. boxes: [N, 4] float32 xyxy in pixels, labels: [N] int64 class indices.
    mask: HxW integer class ids, ``IGNORE_INDEX`` where unlabelled. label: class index, or a
    multi-hot float32 [C] vector for multi-label classification. meta: path, orig_size (h, w),
    image_id, and ``scale`` once resized. encoded: the JPEG file's bytes when the image is to be decoded
    on the training device (``augment/decode.py``); ``image`` is then None, the labels are already
    letterboxed and ``meta["canvas"]`` is the letterbox size.
    """

    image: np.ndarray | None
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None
    label: int | np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    encoded: np.ndarray | None = None

    @property
    def has(self) -> set[str]:
        """The tasks this sample is labelled for (partial labels are normal)."""
        tasks = set()
        if self.label is not None:
            tasks.add("classification")
        if self.boxes is not None:
            tasks.add("detection")
        if self.mask is not None:
            tasks.add("segmentation")
        return tasks

    def replace(self, **changes: Any) -> Sample:
        return replace(self, **changes)


@dataclass
class Batch:
    """A collated batch: ``images`` uint8 [B, 3, H, W]; ``targets[task]`` holds tensors with a
    leading batch dim and a ``valid`` [B] bool mask. Detection targets are padded to the largest
    box count: ``boxes`` [B, M, 4], ``labels`` [B, M] with -1 for padding. ``encoded``: batch position ->
    JPEG bytes (uint8, on the CPU) of the images still to be decoded on the device, whose rows of
    ``images`` hold padding until :func:`~vision_mtl.data.augment.decode.decode_pending` fills them."""

    images: torch.Tensor
    targets: dict[str, dict[str, torch.Tensor]]
    meta: list[dict[str, Any]]
    encoded: dict[int, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        targets = {task: {k: v.to(device, non_blocking=True) for k, v in t.items()} for task, t in self.targets.items()}
        return Batch(self.images.to(device, non_blocking=True), targets, self.meta, self.encoded)

    def __len__(self) -> int:
        return self.images.shape[0]


def collate(samples: list[Sample], tasks: list[str], num_cls_classes: int = 0, multi_label: bool = False) -> Batch:
    """Stack same-sized samples into a :class:`Batch`, padding boxes and marking missing labels invalid."""
    images, encoded = _stack_images(samples)
    size = images.shape[-2:]
    targets: dict[str, dict[str, torch.Tensor]] = {}
    if "classification" in tasks:
        targets["classification"] = _collate_classification(samples, num_cls_classes, multi_label)
    if "detection" in tasks:
        targets["detection"] = _collate_detection(samples)
    if "segmentation" in tasks:
        masks = [s.mask if s.mask is not None else np.full(size, IGNORE_INDEX) for s in samples]
        targets["segmentation"] = {
            "mask": torch.from_numpy(np.stack(masks).astype(np.int64)),
            "valid": torch.tensor([s.mask is not None for s in samples]),
        }
    return Batch(images, targets, [s.meta for s in samples], encoded)


def _stack_images(samples: list[Sample]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """uint8 [B, 3, H, W]; a sample still JPEG-encoded gets a padding row and its bytes in the dict."""
    encoded = {i: torch.from_numpy(s.encoded) for i, s in enumerate(samples) if s.image is None}
    if not encoded:
        return torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous(), encoded
    side = samples[next(iter(encoded))].meta["canvas"]
    images = torch.full((len(samples), 3, side, side), PAD_VALUE, dtype=torch.uint8)
    for i, sample in enumerate(samples):
        if sample.image is not None:
            images[i] = torch.from_numpy(sample.image).permute(2, 0, 1)
    return images, encoded


def _collate_classification(samples: list[Sample], num_classes: int, multi_label: bool) -> dict[str, torch.Tensor]:
    valid = torch.tensor([s.label is not None for s in samples])
    if multi_label:
        labels = torch.zeros(len(samples), num_classes)
        for i, s in enumerate(samples):
            if s.label is not None:
                labels[i] = torch.as_tensor(s.label, dtype=torch.float32)
    else:
        labels = torch.tensor([-1 if s.label is None else int(s.label) for s in samples], dtype=torch.int64)
    return {"labels": labels, "valid": valid}


def _collate_detection(samples: list[Sample]) -> dict[str, torch.Tensor]:
    most = max((len(s.boxes) for s in samples if s.boxes is not None), default=0)
    boxes = torch.zeros(len(samples), most, 4)
    labels = torch.full((len(samples), most), -1, dtype=torch.int64)
    for i, s in enumerate(samples):
        if s.boxes is not None and len(s.boxes):
            boxes[i, : len(s.boxes)] = torch.from_numpy(s.boxes)
            labels[i, : len(s.labels)] = torch.from_numpy(s.labels)
    return {"boxes": boxes, "labels": labels, "valid": torch.tensor([s.boxes is not None for s in samples])}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float in [0, 1], the model's input convention."""
    return images.float() / 255.0
