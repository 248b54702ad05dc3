"""Branch sharing (``model.sharing=branch``): the backbone shared up to a stage, its later stages
copied per task."""

from __future__ import annotations

import copy

import torch
from torch import nn

from vision_mtl.errors import ModelError
from vision_mtl.models.backbone import Backbone, module_stages, run_modules


class BranchedBackbone(nn.Module):
    """Backbone stages 1..``stage`` shared (``body``), the later ones one copy per task (``branches``).

    Built from the whole timm feature extractor: its modules after the split point are moved out of
    it and deep-copied once per task, so every copy starts from the same (possibly pretrained)
    weights. The modules run one after the other as in timm's FeatureListNet, so each task's
    C2..C5 are exactly what the unsplit backbone with that task's weights would give.
    """

    def __init__(self, backbone: Backbone, stage: int, tasks: list[str]):
        super().__init__()
        stages = module_stages(backbone.body)
        shared = [name for name, s in stages.items() if s <= stage]
        if not shared or stages[shared[-1]] != stage:
            raise ModelError(f"model.branch_stage={stage}: backbone has no stage {stage} (its stages are "
                             f"{sorted(set(stages.values()))}); choose one of those below 5")
        self.body = nn.ModuleDict({name: backbone.body[name] for name in shared})
        tail = nn.ModuleDict({name: module for name, module in backbone.body.items() if name not in self.body})
        self.branches = nn.ModuleDict({task: copy.deepcopy(tail) for task in tasks})
        self.stage, self.levels, self.channels = stage, backbone.levels, backbone.channels
        self.mean, self.std = backbone.mean, backbone.std
        self._stages = stages
        self._taps = {**backbone.taps(), shared[-1]: stage}  # the branches start from C<stage>

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """The shared stages' features: C2..C<stage> (C1 too when the branch point is the stem)."""
        return run_modules(self.body, x, self._taps)

    def branch(self, task: str, shared: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """``task``'s C2..C5: the shared levels, then its own stages continued from C<stage>."""
        return {**shared, **run_modules(self.branches[task], shared[self.stage], self._taps)}

    def stage_modules(self, upto: int) -> list[nn.Module]:
        """The modules of stages 1..``upto``, shared and in every branch (``model.freeze_stages``)."""
        return [part[name] for part in (self.body, *self.branches.values()) for name in part
                if self._stages[name] <= upto]
