"""Batched augmentation on the device where the batch lives, keeping boxes and masks consistent."""

from __future__ import annotations

import torch

from vision_mtl.config import AugmentConfig
from vision_mtl.data.sample import Batch


class DeviceAugment:
    """Per-sample random horizontal flip and brightness/contrast jitter, as whole-batch tensor ops.

    Takes a Batch with uint8 images and returns float images in [0, 1]; the flip is applied to the
    images, the detection boxes (padding rows stay untouched) and the segmentation masks together.
    """

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator | None = None):
        self.cfg = cfg
        self.generator = generator

    def __call__(self, batch: Batch) -> Batch:
        images = to_float(batch.images)
        size, device = images.shape[0], images.device
        flip = self._uniform(size, device) < self.cfg.hflip  # [B]
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        targets = {task: dict(t) for task, t in batch.targets.items()}
        if "detection" in targets:
            det = targets["detection"]
            det["boxes"] = _flip_boxes(det["boxes"], flip.view(-1, 1) & (det["labels"] >= 0), images.shape[-1])
        if "segmentation" in targets:
            mask = targets["segmentation"]["mask"]
            targets["segmentation"]["mask"] = torch.where(flip.view(-1, 1, 1), mask.flip(-1), mask)
        images = self._jitter(images)
        return Batch(images, targets, batch.meta)

    def _jitter(self, images: torch.Tensor) -> torch.Tensor:
        size, device = images.shape[0], images.device
        brightness = (self._uniform(size, device) * 2 - 1) * self.cfg.brightness
        contrast = 1 + (self._uniform(size, device) * 2 - 1) * self.cfg.contrast
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        out = (images - mean) * contrast.view(-1, 1, 1, 1) + mean + brightness.view(-1, 1, 1, 1)
        return out.clamp(0.0, 1.0)

    def _uniform(self, size: int, device: torch.device) -> torch.Tensor:
        return torch.rand(size, generator=self.generator, device="cpu" if self.generator else device).to(device)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float in [0, 1], the model's input convention."""
    return images.float() / 255.0


def _flip_boxes(boxes: torch.Tensor, flip: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror the boxes where ``flip`` [B, M] is True."""
    flipped = torch.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]], dim=-1)
    return torch.where(flip.unsqueeze(-1), flipped, boxes)
