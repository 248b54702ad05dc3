"""Reading images and masks from disk into the Sample conventions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vision_mtl.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB, EXIF orientation applied, any PIL mode converted."""
    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image '{path}': {exc}") from exc


def read_mask(path: str | Path) -> np.ndarray:
    """HxW class-index mask from a single-channel or palette PNG (palette indices are the class ids)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"mask '{path}' has mode {img.mode}; expected a single-channel class-index PNG")
            return np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read mask '{path}': {exc}") from exc


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted for a stable order."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
