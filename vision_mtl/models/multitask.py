"""The multi-task network: a shared trunk, task-specific parts after it (``model.sharing``), one head per task."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vision_mtl.config import ModelConfig
from vision_mtl.models.backbone import Backbone
from vision_mtl.models.branch import BranchedBackbone
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
    """backbone -> neck -> ``heads[task]``, shared as ``model.sharing`` says:

    - hard: one :class:`Backbone` and one :class:`PyramidNeck` (``neck``) for every head;
    - neck: one backbone, a neck per task (``neck`` is a ``ModuleDict`` by task);
    - branch: a :class:`BranchedBackbone`, shared up to a stage and per task after it, then a neck per task.

    ``forward(images)`` takes float RGB in [0, 1], [B, 3, H, W] (normalisation happens inside, so
    the exported graph and every caller agree on it) and returns ``{task: raw}``; it is
    ``heads_forward(features(images))``. ``loss``/``predict`` dispatch to the heads.
    """

    def __init__(self, backbone: Backbone | BranchedBackbone, neck: PyramidNeck | nn.ModuleDict,
                 heads: dict[str, TaskHead]):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.heads = nn.ModuleDict(heads)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

    @property
    def sharing(self) -> str:
        """``hard``, ``neck`` or ``branch``, from the parts the model was built with."""
        if isinstance(self.neck, PyramidNeck):
            return "hard"
        return "branch" if isinstance(self.backbone, BranchedBackbone) else "neck"

    def forward(self, images: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, Raw]:
        """Raw outputs of every head, or only of ``tasks`` (inference that needs fewer answers)."""
        return self.heads_forward(self.features(images), tasks)

    def features(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """The shared representation, the last tensors every task reads (gradient balancers aggregate
        the task Jacobians with respect to them): the pyramid ``{level: P}`` under hard sharing, the
        backbone's ``{level: C}`` under neck sharing, those of the shared stages under branch sharing."""
        feats = self.backbone((images - self.mean) / self.std)
        return self.neck(feats) if self.sharing == "hard" else feats

    def heads_forward(self, features: dict[int, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, Raw]:
        """Raw outputs of ``tasks`` (all by default) from the shared ``features``: each task's own
        backbone stages and neck, if any, then its head."""
        return {task: self.heads[task](self._task_pyramid(features, task)) for task in (tasks or self.tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters of the trunk every task shares (what ``features`` is computed with)."""
        trunk = [self.backbone.body, self.neck] if self.sharing == "hard" else [self.backbone.body]
        return [param for module in trunk for param in module.parameters()]

    def task_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the shared trunk: the heads, and per-task necks and stages."""
        shared = {id(param) for param in self.shared_parameters()}
        return [param for param in self.parameters() if id(param) not in shared]

    @property
    def features_end(self) -> nn.Module:
        """The module whose output :meth:`features` returns (a forward hook there sees the shared features)."""
        return self.neck if self.sharing == "hard" else self.backbone

    def _task_pyramid(self, features: dict[int, torch.Tensor], task: str) -> dict[int, torch.Tensor]:
        """The pyramid ``task``'s head reads: the shared one, or its own stages' and neck's."""
        if self.sharing == "hard":
            return features
        if self.sharing == "branch":
            features = self.backbone.branch(task, features)
        return self.neck[task](features)

    def loss(self, raw: dict[str, Raw], targets: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
        """``{task: {component: scalar}}`` for the heads in ``raw`` (those that ran)."""
        return {task: self.heads[task].loss(task_raw, targets[task]) for task, task_raw in raw.items()}

    @torch.no_grad()
    def predict(self, raw: dict[str, Raw], image_size: tuple[int, int]) -> dict[str, dict[str, torch.Tensor]]:
        return {task: self.heads[task].predict(task_raw, image_size) for task, task_raw in raw.items()}


def build_model(cfg: ModelConfig, classes: dict[str, list[str]]) -> MultiTaskModel:
    """Build the model for ``cfg.tasks``, shared as ``cfg.sharing`` says; ``classes[task]`` gives each
    head its output size. A neck builds only the levels its heads read."""
    backbone = Backbone(cfg.backbone, cfg.backbone_weights, cfg.pretrained)
    task_cfgs = {task: getattr(cfg, task) for task in cfg.tasks}
    if cfg.sharing == "branch":
        backbone = BranchedBackbone(backbone, cfg.branch_stage, cfg.tasks)
    if cfg.sharing == "hard":
        levels = {lv for task_cfg in task_cfgs.values() for lv in task_cfg.levels}
        neck = PyramidNeck(backbone.channels, cfg.neck_channels, levels)
    else:
        neck = nn.ModuleDict({task: PyramidNeck(backbone.channels, cfg.neck_channels, set(task_cfg.levels))
                              for task, task_cfg in task_cfgs.items()})
    heads = {task: HEADS[task](cfg.neck_channels, len(classes[task]), task_cfg) for task, task_cfg in task_cfgs.items()}
    return MultiTaskModel(backbone, neck, heads)
