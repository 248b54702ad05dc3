"""Neck: torchvision's FeaturePyramidNetwork over the backbone levels the heads need."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


class PyramidNeck(nn.Module):
    """Builds P<lo>..P5 from C<lo>..C5, plus P6/P7 when a head asks for them.

    Only the levels some head uses are computed: a classification-only model does not pay for
    the stride-4 P2 map, a model without detection does not build P6/P7.
    """

    def __init__(self, in_channels: dict[int, int], out_channels: int, levels: set[int]):
        super().__init__()
        self.lowest = min(min(levels), 5)
        self.in_levels = [lv for lv in sorted(in_channels) if lv >= self.lowest]
        extra = LastLevelP6P7(out_channels, out_channels) if max(levels) > 5 else None
        self.fpn = FeaturePyramidNetwork([in_channels[lv] for lv in self.in_levels], out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        out = self.fpn(OrderedDict((f"p{lv}", feats[lv]) for lv in self.in_levels))
        return {int(name[1:]): x for name, x in out.items()}
