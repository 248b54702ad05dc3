"""Backbone: any timm model as a feature extractor giving C2..C5 (strides 4, 8, 16, 32)."""

from __future__ import annotations

import difflib
import math

import timm
import torch
from timm.models import FeatureDictNet
from torch import nn

from vision_mtl.errors import ModelError
from vision_mtl.models.pretrained import create_pretrained, load_backbone_weights

PYRAMID_STRIDES: dict[int, int] = {2: 4, 3: 8, 4: 16, 5: 32}


class Backbone(nn.Module):
    """Wraps ``timm.create_model(features_only=True)`` and returns ``{level: tensor}`` for C2..C5.

    Channels and strides come from timm's ``feature_info`` rather than being hard-coded, so any
    convolutional timm model with features at strides 4-32 works. ``weights`` (a file or ``pkg:`` name)
    or ``pretrained`` (timm's hub weights) initialise it: see ``models/pretrained.py``.
    """

    def __init__(self, name: str, weights: str | None = None, pretrained: bool = False):
        super().__init__()
        self.body = _create_timm(name, weights, pretrained)
        info = self.body.feature_info
        reductions = info.reduction()
        # the deepest feature of each stride wins when a model reports several at one stride
        by_stride = {r: i for i, r in enumerate(reductions)}
        missing = [s for s in PYRAMID_STRIDES.values() if s not in by_stride]
        if missing:
            raise ModelError(f"backbone '{name}' gives features at strides {sorted(set(reductions))}, "
                             f"but the pyramid needs 4, 8, 16 and 32; choose a convolutional backbone")
        self.levels = list(PYRAMID_STRIDES)
        self._indices = [by_stride[PYRAMID_STRIDES[lv]] for lv in self.levels]
        self.channels = {lv: info.channels()[i] for lv, i in zip(self.levels, self._indices)}
        cfg = self.body.pretrained_cfg
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        feats = self.body(x)
        return {lv: feats[i] for lv, i in zip(self.levels, self._indices)}

    def taps(self) -> dict[str, int]:
        """``{module name in body: level}``: where each pyramid level C2..C5 is read."""
        names = self.body.feature_info.module_name()
        return {names[i].replace(".", "_"): lv for lv, i in zip(self.levels, self._indices)}

    def stage_modules(self, upto: int) -> list[nn.Module]:
        """The modules of backbone stages 1..``upto`` (what ``model.freeze_stages`` freezes)."""
        return [self.body[name] for name, stage in module_stages(self.body).items() if stage <= upto]


def module_stages(body: nn.Module) -> dict[str, int]:
    """``{module name: stage}`` for the modules of a timm feature extractor, in order: a module's
    stage is the level log2(stride) of the first feature read at or after it (1 = the stride-2 stem).

    Needs timm's FeatureListNet/FeatureDictNet (an ordered ``ModuleDict`` run module after module);
    models with their own feature classes (EfficientNet, MobileNet, ...) cannot be split by stage."""
    if not isinstance(body, FeatureDictNet):
        raise ModelError(f"model.sharing=branch and model.freeze_stages need a backbone that timm builds as a "
                         f"FeatureListNet (e.g. resnet, convnext, regnet), not {type(body).__name__}; "
                         "use model.sharing=neck or hard and model.freeze_stages=0")
    info = body.feature_info
    taps = {name.replace(".", "_"): round(math.log2(r)) for name, r in zip(info.module_name(), info.reduction())}
    stages, pending = {}, []
    for name in body:
        pending.append(name)
        if name in taps:
            stages.update(dict.fromkeys(pending, taps[name]))
            pending = []
    return stages


def run_modules(modules: nn.ModuleDict, x: torch.Tensor, taps: dict[str, int]) -> dict[int, torch.Tensor]:
    """Run ``modules`` one after the other on ``x`` (as timm's FeatureListNet does) and keep the
    outputs of those named in ``taps``, by level."""
    out = {}
    for name, module in modules.items():
        x = module(x)
        if name in taps:
            out[taps[name]] = x
    return out


def _create_timm(name: str, weights: str | None, pretrained: bool) -> nn.Module:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ModelError(f"unknown timm backbone '{name}'{hint}")
    if pretrained:
        return create_pretrained(name)
    body = timm.create_model(name, features_only=True, pretrained=False)
    if weights is not None:
        load_backbone_weights(body, name, weights)
    return body
