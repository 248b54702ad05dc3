"""Class colours shared by overlays and augmentation previews."""

from __future__ import annotations

import colorsys

import numpy as np


def palette(count: int) -> np.ndarray:
    """``count`` distinct RGB colours (golden-ratio hues), the same for every call."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 1.0)] for h in hues], dtype=np.uint8)
