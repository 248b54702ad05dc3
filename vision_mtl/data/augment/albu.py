"""``train.augment.backend: albumentations``: the device recipe per image, in the DataLoader workers.

The same resolved parameters as :class:`DeviceAugment` (random resized crop, horizontal flip, affine,
colour jitter, grayscale, blur, noise), on a letterboxed :class:`Sample`: boxes through ``BboxParams``
(clipped, dropped below ``min_box_area`` of their area), masks resampled nearest, pixels from outside
the image letterbox grey with ignore labels. Mosaic and mixup need the batch: they stay on the device.
Each draw is seeded from (train.seed, epoch, position in the epoch) by :class:`EpochSampler`.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

from vision_mtl.config import AugmentConfig
from vision_mtl.data.augment.presets import resolve_augment
from vision_mtl.data.sample import IGNORE_INDEX, PAD_VALUE, Sample


class AlbumentationsAugment:
    """Augments one letterboxed ``size`` x ``size`` Sample, reproducibly from the draw's ``seed``."""

    def __init__(self, cfg: AugmentConfig, size: int):
        params = resolve_augment(cfg)
        boxes = A.BboxParams("pascal_voc", label_fields=["labels"], min_visibility=params["min_box_area"],
                             clip=True, filter_invalid_bboxes=True)
        self.compose = A.Compose(albumentations_ops(params, size), bbox_params=boxes, seed=0)

    def __call__(self, sample: Sample, seed: int) -> Sample:
        self.compose.set_random_seed(seed)
        has_boxes, has_mask = sample.boxes is not None, sample.mask is not None
        inputs: dict[str, Any] = {
            "image": sample.image,
            "bboxes": sample.boxes if has_boxes else np.zeros((0, 4), np.float32),
            "labels": sample.labels if has_boxes else np.zeros(0, np.int64),
        }
        if has_mask:
            inputs["mask"] = sample.mask
        out = self.compose(**inputs)
        changes: dict[str, Any] = {"image": np.ascontiguousarray(out["image"])}
        if has_boxes:
            changes["boxes"] = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            changes["labels"] = np.asarray(out["labels"], np.int64)
        if has_mask:
            changes["mask"] = out["mask"]
        return sample.replace(**changes)


def albumentations_ops(p: dict[str, Any], size: int) -> list[A.BasicTransform]:
    """The albumentations transforms for the resolved parameters ``p``, in the device pipeline's order,
    skipping those that would do nothing."""
    ops: list[A.BasicTransform] = []
    if p["crop"] > 0:
        ops.append(A.RandomResizedCrop((size, size), scale=tuple(p["crop_scale"]), p=p["crop"]))
    if p["hflip"] > 0:
        ops.append(A.HorizontalFlip(p=p["hflip"]))
    if p["affine"] > 0:
        ops.append(A.Affine(scale=tuple(p["scale"]), translate_percent=(-p["translate"], p["translate"]),
                            rotate=(-p["rotate"], p["rotate"]), shear=(-p["shear"], p["shear"]),
                            border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, fill_mask=IGNORE_INDEX, p=p["affine"]))
    if any(p[k] > 0 for k in ("brightness", "contrast", "saturation", "hue")):
        ops.append(A.ColorJitter(_around_one(p["brightness"]), _around_one(p["contrast"]),
                                 _around_one(p["saturation"]), (-p["hue"], p["hue"]), p=1.0))
    if p["grayscale"] > 0:
        ops.append(A.ToGray(num_output_channels=3, p=p["grayscale"]))
    if p["blur"] > 0:
        ops.append(A.GaussianBlur(sigma_limit=tuple(p["blur_sigma"]), p=p["blur"]))
    if p["noise"] > 0 and p["noise_std"] > 0:
        ops.append(A.GaussNoise(std_range=(p["noise_std"], p["noise_std"]), p=p["noise"]))
    return ops


def _around_one(strength: float) -> tuple[float, float]:
    """kornia's jitter strength s as albumentations' factor range [1 - s, 1 + s]."""
    return max(0.0, 1.0 - strength), 1.0 + strength
