"""The one preprocessing step for images that do not come through a dataset (folder inference,
the Predictor, export checks): the same letterbox and collate the loaders use, so every path
feeds the model alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vision_mtl.data.image_io import read_image_to_fit
from vision_mtl.data.sample import Batch, Sample, collate
from vision_mtl.data.transforms import letterbox
from vision_mtl.errors import DataError


def prepare_image(image: np.ndarray, size: int, meta: dict[str, Any] | None = None,
                  orig_size: tuple[int, int] | None = None) -> Sample:
    """An HxWx3 uint8 RGB image letterboxed to ``size``; ``meta`` gains ``orig_size`` and ``scale``
    (what :func:`~vision_mtl.engine.results.split_predictions` inverts). ``orig_size``: the full
    size of an image decoded smaller. An image without pixels is a one-line :class:`DataError`."""
    if image.ndim < 2 or 0 in image.shape[:2]:
        where = f"image '{meta['path']}'" if meta and "path" in meta else "an image"
        raise DataError(f"{where} has no pixels (shape {list(image.shape)}); give images at least 1x1")
    return letterbox(Sample(image=image, meta=dict(meta or {})), size, orig_size)


def read_prepared(path: str | Path, size: int, meta: dict[str, Any] | None = None) -> Sample:
    """An image file decoded (at reduced scale where the letterbox shrinks it 2x or more) and
    letterboxed to ``size``: what evaluation, the Predictor and folder inference feed the model."""
    image, orig_size = read_image_to_fit(path, size)
    return prepare_image(image, size, meta, orig_size)


def prepare_images(images: list[np.ndarray], size: int, metas: list[dict[str, Any]] | None = None) -> Batch:
    """HxWx3 uint8 RGB images -> a Batch of letterboxed uint8 [B, 3, size, size] with each image's meta."""
    metas = metas or [{} for _ in images]
    return collate_prepared([prepare_image(image, size, meta) for image, meta in zip(images, metas)])


def collate_prepared(samples: list[Sample]) -> Batch:
    """Letterboxed, unlabelled samples -> one Batch."""
    return collate(samples, tasks=[])


def read_images(paths: list[Path], size: int) -> Batch:
    """Read and prepare image files; ``meta["path"]`` names each one."""
    return collate_prepared([read_prepared(p, size, {"path": str(p)}) for p in paths])
