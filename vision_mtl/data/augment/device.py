"""Batched augmentation on the device where the batch lives, on kornia, keeping boxes and masks consistent.

Each sample draws its own parameters from the global RNG of the batch's device (what a checkpoint
saves, so a resumed run augments exactly as the uninterrupted one). kornia moves images, boxes and
masks together; only the label bookkeeping kornia has no notion of is ours: padding rows, clipping
and dropping boxes (``boxes.py``), and the ignore value for pixels from outside the image.
"""

from __future__ import annotations

import math
from typing import Any

import kornia.augmentation as K
import torch

from vision_mtl.config import AugmentConfig
from vision_mtl.data.augment.boxes import box_corners, clip_quads
from vision_mtl.data.augment.mix import mixup, mosaic
from vision_mtl.data.augment.presets import resolve_augment, resolve_backend
from vision_mtl.data.sample import IGNORE_INDEX, Batch, to_float

_Op = K.AugmentationBase2D
_Steps = tuple[list[K.AugmentationSequential], K.AugmentationSequential | None]  # geometric steps, photometric


class DeviceAugment:
    """Mosaic, geometric (random resized crop, horizontal flip, affine), mixup, then photometric
    (colour jitter, grayscale, blur, noise) augmentation of a :class:`Batch`, as ``train.augment``
    resolves for training on ``device``. With the albumentations backend the workers did the per-image
    ops, and only the conversion and the mixes (``mix.py``) are left here.

    Takes uint8 images and returns float images in [0, 1]. Boxes follow their corners and are clipped
    to the image after each geometric op (so a later op cannot bring back a part an earlier one cut
    off); a box keeping less than ``min_box_area`` of its area becomes padding (label -1, zero box).
    Masks are resampled nearest and pixels from outside the image become ``IGNORE_INDEX``. Samples not
    labelled for a task stay unlabelled; the input batch is not modified.
    """

    def __init__(self, cfg: AugmentConfig, device: torch.device | str | None = None):
        self.params = resolve_augment(cfg)
        if device is None:  # no training device to resolve ``backend: auto`` for: the per-image ops run here
            self.per_image = cfg.backend != "albumentations"
        else:
            self.per_image = resolve_backend(cfg, torch.device(device)) == "device"
        self.mixing = True
        self._ops: dict[tuple[int, int, torch.device], _Steps] = {}

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Mosaic and mixup stay off in the last ``mix_off_epochs`` of ``epochs`` (0-based ``epoch``)."""
        self.mixing = epoch < epochs - self.params["mix_off_epochs"]

    def __call__(self, batch: Batch) -> Batch:
        images = to_float(batch.images)
        targets = {task: dict(t) for task, t in batch.targets.items()}
        geometric, photometric = self._pipelines(images.shape[-2], images.shape[-1], images.device)
        if self.mixing and self.params["mosaic"] > 0:
            images = mosaic(images, targets, self.params["mosaic"], self.params["min_box_area"])
        if geometric:
            images = self._geometric(geometric, images, targets)
        if self.mixing and self.params["mixup"] > 0:
            images = mixup(images, targets, self.params["mixup"])
        if photometric is not None:
            images = photometric(images).clamp(0.0, 1.0)
        return Batch(images, targets, batch.meta)

    def _geometric(self, steps: list[K.AugmentationSequential], images: torch.Tensor,
                   targets: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        """Run the geometric steps on images, boxes and masks together; updates ``targets`` in place."""
        det, seg = targets.get("detection"), targets.get("segmentation")
        size = images.shape[-2:]
        keys = ["input"] + ["bbox"] * (det is not None) + ["mask"] * (seg is not None)
        if det is not None:
            kept = (det["labels"] >= 0).float()  # the fraction of each box's area still in the image
            boxes = torch.where(kept.unsqueeze(-1) > 0, det["boxes"], 0.0)
        if seg is not None:
            mask = (seg["mask"] + 1).unsqueeze(1).float()  # shifted: kornia's zero fill marks "outside"
        for step in steps:
            inputs = [images]
            if det is not None:
                # Our boxes are edge coordinates (x2 exclusive); kornia's are pixel centres.
                inputs.append(box_corners(boxes) - 0.5)
            if seg is not None:
                inputs.append(mask)
            outputs = dict(zip(keys, step(*inputs, data_keys=keys) if len(keys) > 1 else [step(images)]))
            images = outputs["input"]
            if det is not None:
                boxes, step_kept = clip_quads(outputs["bbox"] + 0.5, size)
                kept = kept * step_kept
            if seg is not None:
                mask = outputs["mask"]
        if det is not None:
            keep = (kept > 0) & (kept >= self.params["min_box_area"])
            det["boxes"] = torch.where(keep.unsqueeze(-1), boxes, 0.0)
            det["labels"] = torch.where(keep, det["labels"], -1)
        if seg is not None:
            mask = mask.squeeze(1).round().long()
            seg["mask"] = torch.where(mask == 0, IGNORE_INDEX, mask - 1).clamp(max=IGNORE_INDEX)
        return images.clamp(0.0, 1.0)

    def _pipelines(self, height: int, width: int, device: torch.device) -> _Steps:
        """One kornia step per geometric op (boxes are clipped between them) and one for the photometric
        ops, for this image size, their random generators on ``device`` (built once)."""
        key = (height, width, device)
        if key not in self._ops:
            geometric, photometric = build_ops(self.params, (height, width)) if self.per_image else ([], [])
            self._ops[key] = ([K.AugmentationSequential(op).to(device) for op in geometric],
                              K.AugmentationSequential(*photometric).to(device) if photometric else None)
        return self._ops[key]


def build_ops(p: dict[str, Any], size: tuple[int, int]) -> tuple[list[_Op], list[_Op]]:
    """The geometric and the photometric kornia augmentations the resolved parameters ``p`` ask for,
    skipping those that would do nothing."""
    geometric: list[_Op] = []
    if p["crop"] > 0:
        geometric.append(K.RandomResizedCrop(size, scale=tuple(p["crop_scale"]), p=p["crop"]))
    if p["hflip"] > 0:
        geometric.append(K.RandomHorizontalFlip(p=p["hflip"]))
    if p["affine"] > 0:
        geometric.append(K.RandomAffine(degrees=p["rotate"], translate=(p["translate"], p["translate"]),
                                        scale=tuple(p["scale"]), shear=p["shear"], p=p["affine"]))
    photometric: list[_Op] = []
    if any(p[k] > 0 for k in ("brightness", "contrast", "saturation", "hue")):
        photometric.append(K.ColorJitter(p["brightness"], p["contrast"], p["saturation"], p["hue"], p=1.0))
    if p["grayscale"] > 0:
        photometric.append(K.RandomGrayscale(p=p["grayscale"]))
    if p["blur"] > 0:
        radius = math.ceil(3 * p["blur_sigma"][1])
        photometric.append(K.RandomGaussianBlur(2 * radius + 1, tuple(p["blur_sigma"]), p=p["blur"]))
    if p["noise"] > 0 and p["noise_std"] > 0:
        photometric.append(K.RandomGaussianNoise(std=p["noise_std"], p=p["noise"]))
    return geometric, photometric
