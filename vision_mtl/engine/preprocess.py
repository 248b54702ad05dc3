"""The one preprocessing step for images that do not come through a dataset (folder inference,
export checks): the same letterbox and collate the loaders use, so every path feeds the model alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vision_mtl.data.image_io import read_image
from vision_mtl.data.sample import Batch, Sample, collate
from vision_mtl.data.transforms import letterbox


def prepare_images(images: list[np.ndarray], size: int, metas: list[dict[str, Any]] | None = None) -> Batch:
    """HxWx3 uint8 RGB images -> a Batch of letterboxed uint8 [B, 3, size, size] with each image's
    ``meta`` (``orig_size``, ``scale``: what :func:`~vision_mtl.engine.results.split_predictions` inverts)."""
    metas = metas or [{} for _ in images]
    return collate([letterbox(Sample(image=image, meta=dict(meta)), size) for image, meta in zip(images, metas)],
                   tasks=[])


def read_images(paths: list[Path], size: int) -> Batch:
    """Read and prepare image files; ``meta["path"]`` names each one."""
    return prepare_images([read_image(p) for p in paths], size, [{"path": str(p)} for p in paths])
