"""The augmentation presets and how ``train.augment`` resolves against them: explicit keys win."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from vision_mtl.config import AugmentConfig
from vision_mtl.errors import ConfigError

_OFF: dict[str, Any] = {
    "hflip": 0.0, "crop": 0.0, "crop_scale": [1.0, 1.0], "affine": 0.0, "rotate": 0.0, "shear": 0.0,
    "translate": 0.0, "scale": [1.0, 1.0], "min_box_area": 0.25, "brightness": 0.0, "contrast": 0.0,
    "saturation": 0.0, "hue": 0.0, "blur": 0.0, "blur_sigma": [0.1, 1.0], "noise": 0.0, "noise_std": 0.0,
    "grayscale": 0.0, "mosaic": 0.0, "mixup": 0.0, "mix_off_epochs": 0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "none": _OFF,
    "light": {**_OFF, "hflip": 0.5, "brightness": 0.2, "contrast": 0.2},
    "default": {**_OFF, "hflip": 0.5, "crop": 0.5, "crop_scale": [0.5, 1.0], "affine": 0.5, "rotate": 10.0,
                "shear": 5.0, "translate": 0.1, "scale": [0.75, 1.25], "brightness": 0.2, "contrast": 0.2,
                "saturation": 0.3, "hue": 0.02, "blur": 0.1, "blur_sigma": [0.1, 1.5], "noise": 0.1,
                "noise_std": 0.03, "grayscale": 0.05, "mosaic": 0.5, "mix_off_epochs": 2},
    "strong": {**_OFF, "hflip": 0.5, "crop": 0.8, "crop_scale": [0.25, 1.0], "affine": 0.8, "rotate": 25.0,
               "shear": 10.0, "translate": 0.2, "scale": [0.5, 1.5], "brightness": 0.3, "contrast": 0.3,
               "saturation": 0.5, "hue": 0.05, "blur": 0.3, "blur_sigma": [0.1, 2.0], "noise": 0.3,
               "noise_std": 0.05, "grayscale": 0.1, "mosaic": 0.8, "mixup": 0.15,
               "mix_off_epochs": 2},
}

_PROBABILITIES = ("hflip", "crop", "affine", "blur", "noise", "grayscale", "min_box_area", "mosaic", "mixup")
_RANGES = ("crop_scale", "scale", "blur_sigma")


def resolve_augment(cfg: AugmentConfig) -> dict[str, Any]:
    """Every augmentation parameter: the preset's value unless ``cfg`` sets it; checked, one-line errors."""
    params = dict(PRESETS[cfg.preset])
    params.update({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                   if f.name not in ("preset", "backend") and getattr(cfg, f.name) is not None})
    for key in _PROBABILITIES:
        if not 0.0 <= params[key] <= 1.0:
            raise ConfigError(f"train.augment.{key}={params[key]} must be in [0, 1]")
    for key in _RANGES:
        low_high = params[key]
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            raise ConfigError(f"train.augment.{key}={low_high} must be [min, max] with 0 < min <= max")
    for key in ("mix_off_epochs", "rotate", "shear", "translate", "brightness", "contrast", "saturation", "hue",
                "noise_std"):
        if params[key] < 0:
            raise ConfigError(f"train.augment.{key}={params[key]} must be >= 0")
    for key, most in (("translate", 1.0), ("hue", 0.5), ("crop_scale", 1.0)):
        value = params[key][1] if key == "crop_scale" else params[key]
        if value > most:
            raise ConfigError(f"train.augment.{key}={params[key]} must be at most {most}")
    return params


# What ``backend: auto`` runs on a CPU: the faster in `tools/benchmark.py augment` (docs/benchmarks.md,
# issue 13): albumentations, 4.83 images/s against 0.80 for the kornia pipeline (ratio 0.21), preset
# default at 640 px, batch 16, 2 threads on the shared 2-core machine.
CPU_BACKEND = "albumentations"


def resolve_backend(cfg: AugmentConfig, device: torch.device) -> str:
    """``device`` or ``albumentations``: where the per-image recipe runs for training on ``device``."""
    if cfg.backend != "auto":
        return cfg.backend
    return "device" if device.type == "cuda" else CPU_BACKEND
