"""The interface every task head implements, so the model and trainer treat all tasks alike."""

from __future__ import annotations

import math

import torch
from torch import nn

Raw = dict[str, torch.Tensor]


class TaskHead(nn.Module):
    """A head reads pyramid levels and owns its loss and decoding.

    ``forward(features) -> raw``; ``loss(raw, targets) -> {name: scalar}`` using only samples
    whose ``targets["valid"]`` is True, by weighting per-sample terms rather than indexing, so a
    training step never waits on the GPU and a batch without a valid sample gives zero losses that
    keep every parameter in the graph; ``predict(raw, image_size) -> {name: tensor}`` with pure
    batched tensor ops, so it exports to ONNX unchanged.
    """

    levels: list[int]

    def forward(self, features: dict[int, torch.Tensor]) -> Raw:
        raise NotImplementedError

    def loss(self, raw: Raw, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, raw: Raw, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` holds, without a host sync (no boolean indexing): zero, still
    connected to ``values``, when nothing holds, so every head parameter gets a gradient (DDP needs it)."""
    return torch.where(mask, values, 0).sum() / mask.sum().clamp(min=1)


def conv_norm_act(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv + GroupNorm + ReLU: the building block of the dense heads (GN works at any batch size)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(32, max(1, out_channels // 2)), out_channels),  # >= 2 channels a group: 1x1 maps work
        nn.ReLU(inplace=True),
    )
