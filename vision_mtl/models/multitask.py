"""The multi-task network: one shared backbone and pyramid, one head per task."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vision_mtl.config import ModelConfig
from vision_mtl.models.backbone import Backbone
from vision_mtl.models.heads.base import Raw, TaskHead
from vision_mtl.models.heads.classification import ClassificationHead
from vision_mtl.models.heads.detection import DetectionHead
from vision_mtl.models.heads.segmentation import SegmentationHead
from vision_mtl.models.neck import PyramidNeck

HEADS: dict[str, type[TaskHead]] = {
    "classification": ClassificationHead,
    "detection": DetectionHead,
    "segmentation": SegmentationHead,
}


class MultiTaskModel(nn.Module):
    """Hard parameter sharing: backbone -> FPN -> ``heads[task]``.

    ``forward(images)`` takes float RGB in [0, 1], [B, 3, H, W] (normalisation happens inside, so
    the exported graph and every caller agree on it) and returns ``{task: raw}``.
    ``loss``/``predict`` dispatch to the heads.
    """

    def __init__(self, backbone: Backbone, neck: PyramidNeck, heads: dict[str, TaskHead]):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.heads = nn.ModuleDict(heads)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

    def forward(self, images: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, Raw]:
        """Raw outputs of every head, or only of ``tasks`` (inference that needs fewer answers)."""
        return self.heads_forward(self.features(images), tasks)

    def features(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """The shared representation: the pyramid ``{level: [B, C, H, W]}`` every head reads
        (gradient balancers aggregate the task Jacobians with respect to it)."""
        return self.neck(self.backbone((images - self.mean) / self.std))

    def heads_forward(self, features: dict[int, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, Raw]:
        """Raw outputs of the heads of ``tasks`` (all by default) on the shared ``features``."""
        return {task: self.heads[task](features) for task in (tasks or self.tasks)}

    def loss(self, raw: dict[str, Raw], targets: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
        """``{task: {component: scalar}}`` for the heads in ``raw`` (those that ran)."""
        return {task: self.heads[task].loss(task_raw, targets[task]) for task, task_raw in raw.items()}

    @torch.no_grad()
    def predict(self, raw: dict[str, Raw], image_size: tuple[int, int]) -> dict[str, dict[str, torch.Tensor]]:
        return {task: self.heads[task].predict(task_raw, image_size) for task, task_raw in raw.items()}


def build_model(cfg: ModelConfig, classes: dict[str, list[str]]) -> MultiTaskModel:
    """Build the model for ``cfg.tasks``; ``classes[task]`` gives each head its output size."""
    backbone = Backbone(cfg.backbone, cfg.backbone_weights)
    task_cfgs = {task: getattr(cfg, task) for task in cfg.tasks}
    levels = {lv for task_cfg in task_cfgs.values() for lv in task_cfg.levels}
    neck = PyramidNeck(backbone.channels, cfg.neck_channels, levels)
    heads = {task: HEADS[task](cfg.neck_channels, len(classes[task]), task_cfg) for task, task_cfg in task_cfgs.items()}
    return MultiTaskModel(backbone, neck, heads)
