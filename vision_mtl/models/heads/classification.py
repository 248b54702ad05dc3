"""Image-level classification from globally pooled pyramid levels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vision_mtl.config import ClassificationConfig
from vision_mtl.models.heads.base import Raw, TaskHead, masked_mean


class ClassificationHead(TaskHead):
    """Average-pools each configured level, concatenates, and applies a linear classifier.

    Multi-class: ``targets["labels"]`` int64 [B], cross-entropy with label smoothing.
    Multi-label: ``targets["labels"]`` float multi-hot [B, C], binary cross-entropy.
    ``predict`` gives ``scores`` [B, C]: softmax probabilities or per-class sigmoids.
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: ClassificationConfig):
        super().__init__()
        self.levels = list(cfg.levels)
        self.multi_label = cfg.multi_label
        self.label_smoothing = cfg.label_smoothing
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(in_channels * len(self.levels), num_classes)

    def forward(self, features: dict[int, torch.Tensor]) -> Raw:
        pooled = torch.cat([features[lv].mean(dim=(2, 3)) for lv in self.levels], dim=1)  # [B, L*C]
        return {"logits": self.fc(self.dropout(pooled))}

    def loss(self, raw: Raw, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        valid, labels = targets["valid"], targets["labels"]
        # Unlabelled rows are neither read nor given a gradient: their logits and labels (-1, or
        # anything) are replaced before the loss, so even a NaN there cannot reach the backward.
        logits = torch.where(valid[:, None], raw["logits"], 0)
        if self.multi_label:
            labels = torch.where(valid[:, None], labels.float(), 0)
            per_sample = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1)
        else:
            labels = torch.where(valid, labels, 0)
            per_sample = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction="none")
        return {"ce": masked_mean(per_sample, valid)}

    def predict(self, raw: Raw, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        logits = raw["logits"]
        return {"scores": logits.sigmoid() if self.multi_label else logits.softmax(dim=1)}
