"""Semantic segmentation: a Semantic-FPN head fusing pyramid levels at the finest one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from vision_mtl.config import SegmentationConfig
from vision_mtl.models.heads.base import Raw, TaskHead, conv_norm_act


class SegmentationHead(TaskHead):
    """Panoptic-FPN style semantic branch (Kirillov et al. 2019).

    Each level P_l passes through ``max(1, l - lowest)`` conv blocks, each followed by a 2x
    upsample, so all reach the finest level (1/8 for the default P3, 1/4 with P2); the sum goes through
    a 1x1 classifier.
    Training: ``targets["mask"]`` int64 [B, H, W] at input size, ``ignore_index`` for unlabelled
    pixels; loss = cross-entropy + Dice on logits upsampled to the input size.
    ``predict`` gives ``mask`` [B, H, W] class ids at ``image_size``.
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: SegmentationConfig):
        super().__init__()
        self.levels = sorted(cfg.levels)
        self.ignore_index = cfg.ignore_index
        self.dice_weight = cfg.dice_weight
        lowest = self.levels[0]
        self.branches = nn.ModuleList()
        for lv in self.levels:
            depth = max(1, lv - lowest)
            blocks = [conv_norm_act(in_channels if i == 0 else cfg.channels, cfg.channels) for i in range(depth)]
            self.branches.append(nn.ModuleList(blocks))
        self.classifier = nn.Conv2d(cfg.channels, num_classes, 1)
        self.dice = DiceLoss(mode="multiclass", ignore_index=cfg.ignore_index, from_logits=True)

    def forward(self, features: dict[int, torch.Tensor]) -> Raw:
        target_size = features[self.levels[0]].shape[-2:]
        fused = None
        for lv, blocks in zip(self.levels, self.branches):
            x = features[lv]
            for block in blocks:
                x = block(x)
                if x.shape[-2:] != target_size:
                    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if x.shape[-2:] != target_size:
                x = F.interpolate(x, size=target_size, mode="bilinear", align_corners=False)
            fused = x if fused is None else fused + x
        return {"logits": self.classifier(fused)}  # [B, K, H/s, W/s]

    def loss(self, raw: Raw, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # samples without a mask become all-ignored, which both CE and Dice already leave out
        masks = torch.where(targets["valid"].view(-1, 1, 1), targets["mask"], self.ignore_index)
        logits = F.interpolate(raw["logits"], size=masks.shape[-2:], mode="bilinear", align_corners=False)
        # a sum over the labelled pixels, not a mean: zero rather than NaN when every pixel is ignored
        ce = F.cross_entropy(logits, masks, ignore_index=self.ignore_index, reduction="sum")
        losses = {"ce": ce / (masks != self.ignore_index).sum().clamp(min=1)}
        if self.dice_weight > 0:
            losses["dice"] = self.dice_weight * self.dice(logits, masks)
        return losses

    def predict(self, raw: Raw, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {"mask": self.logits_at(raw, image_size).argmax(dim=1)}

    def logits_at(self, raw: Raw, image_size: tuple[int, int]) -> torch.Tensor:
        """Class logits bilinearly upsampled to ``image_size``: [B, K, H, W] (``predict`` takes their argmax)."""
        return F.interpolate(raw["logits"], size=image_size, mode="bilinear", align_corners=False)
