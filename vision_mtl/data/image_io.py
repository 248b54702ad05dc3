"""Reading images and masks from disk into the Sample conventions."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vision_mtl.errors import DataError, first_line

# Raster formats Pillow or OpenCV decode (the last few, e.g. .exr/.hdr/.pfm, only through OpenCV).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
                  ".avif", ".jp2", ".j2k", ".pbm", ".pgm", ".ppm", ".pnm", ".tga", ".ico", ".qoi", ".psd", ".pcx",
                  ".sgi", ".ras", ".dds", ".xbm", ".xpm", ".pfm", ".sr", ".exr", ".hdr", ".pic")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB, EXIF orientation applied; grayscale, palette, RGBA, CMYK and 16-bit converted."""
    return read_image_to_fit(path, None)[0]


def read_image_to_fit(path: str | Path, fit: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image`, and the image's full (height, width). With ``fit``, a JPEG at least twice
    that size on its longer side is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, through
    PIL's ``draft``), never below what fitting it into ``fit`` keeps: decoding does a fraction of the
    work, and the letterbox, which would have shrunk the full image, shrinks this one less."""
    try:
        with Image.open(path) as img:
            full = _displayed_size(img)
            width, height = img.size
            if fit is not None and img.format == "JPEG" and max(width, height) >= 2 * fit:
                scale = fit / max(width, height)
                img.draft(img.mode, (math.ceil(width * scale), math.ceil(height * scale)))
            return _to_rgb(ImageOps.exif_transpose(img)), full
    except UnidentifiedImageError as exc:  # not a format Pillow knows: OpenCV may (HDR, EXR, PFM, ...)
        image = _read_with_opencv(path)
        if image is None:
            raise DataError(f"cannot read image '{path}': {first_line(exc)}") from exc
        return image, image.shape[:2]
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read image '{path}': {first_line(exc)}") from exc


def _read_with_opencv(path: str | Path) -> np.ndarray | None:
    """HxWx3 uint8 RGB through OpenCV (16-bit scaled down, float clipped to [0, 1]), None if it cannot decode."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        return None
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round()
    elif image.dtype != np.uint8:
        image = (np.nan_to_num(image.astype(np.float32)).clip(0, 1) * 255).round()
    return cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_BGR2RGB)


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # high bit depth: PIL's convert() would clip at 255
        gray = (np.asarray(img, dtype=np.float32) / 257.0).clip(0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P":  # via RGBA so a transparency entry is handled like an alpha channel
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"))


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) after EXIF orientation, from the file header alone (no decoding)."""
    try:
        with Image.open(path) as img:
            return _displayed_size(img)
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read image '{path}': {first_line(exc)}") from exc


def _displayed_size(img: Image.Image) -> tuple[int, int]:
    """(height, width) of an opened image once its EXIF orientation is applied."""
    width, height = img.size
    return (width, height) if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED else (height, width)


def read_jpeg_bytes(path: str | Path) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The file's bytes and (height, width), from its header alone, when it is a plain JPEG a device
    decodes to the image :func:`read_image` gives (``augment/decode.py``): RGB, baseline, no EXIF
    rotation, ending in the end-of-image marker (a file cut short is left to the CPU decoder, which
    refuses it, whatever a device decoder would make of it). None when it must be decoded on the CPU;
    DataError when it cannot be opened."""
    try:
        with Image.open(path) as img:
            plain = (img.format == "JPEG" and img.mode == "RGB" and not img.info.get("progressive")
                     and img.getexif().get(_EXIF_ORIENTATION, 1) == 1)
            width, height = img.size
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read image '{path}': {first_line(exc)}") from exc
    if not plain:
        return None
    data = np.fromfile(path, np.uint8)
    complete = bytes(data[-64:]).rstrip(b"\x00").endswith(b"\xff\xd9")  # some writers pad after the marker
    return (data, (height, width)) if complete else None


def read_mask(path: str | Path) -> np.ndarray:
    """HxW class-index mask from a single-channel or palette PNG (palette indices are the class ids)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"mask '{path}' has mode {img.mode}; expected a single-channel class-index PNG")
            return np.asarray(img)
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read mask '{path}': {first_line(exc)}") from exc


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted for a stable order."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
