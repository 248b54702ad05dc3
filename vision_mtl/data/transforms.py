"""CPU transforms on a Sample: aspect-preserving resize into a fixed square canvas."""

from __future__ import annotations

import cv2
import numpy as np

from vision_mtl.data.sample import IGNORE_INDEX, PAD_VALUE, Sample


def letterbox(sample: Sample, size: int, orig_size: tuple[int, int] | None = None) -> Sample:
    """Scale the longer side to ``size`` and pad bottom/right to ``size x size``.

    Padding only at the bottom and right keeps the inverse a pure scale: original pixel =
    network pixel / ``meta["scale"]``. Padded mask pixels are ``IGNORE_INDEX``. ``orig_size``: the
    image's full (height, width) when ``sample.image`` was decoded smaller (``read_image_to_fit``);
    the labels and ``meta`` refer to the full image.
    """
    h, w = orig_size or sample.image.shape[:2]
    scale = letterbox_scale((h, w), size)
    new_h, new_w = content_shape((h, w), scale)
    shrink = new_h < sample.image.shape[0] or new_w < sample.image.shape[1]
    image = _resize(sample.image, new_w, new_h, cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = image
    return letterbox_labels(sample.replace(image=canvas), (h, w), size)


def letterbox_labels(sample: Sample, orig_size: tuple[int, int], size: int) -> Sample:
    """The labels part of :func:`letterbox` for an image of ``orig_size`` (boxes scaled and clipped,
    mask resized nearest and padded with ignore, ``orig_size``/``scale`` in meta); the image is left
    as it is, so a JPEG decoded later on the GPU can be letterboxed there (``augment/decode.py``)."""
    scale = letterbox_scale(orig_size, size)
    new_h, new_w = content_shape(orig_size, scale)
    changes = {"meta": {**sample.meta, "orig_size": tuple(orig_size), "scale": scale}}
    if sample.boxes is not None:
        boxes = sample.boxes * np.float32(scale)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, new_w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, new_h)
        changes["boxes"] = boxes
    if sample.mask is not None:
        mask = np.full((size, size), IGNORE_INDEX, dtype=sample.mask.dtype)
        mask[:new_h, :new_w] = _resize(sample.mask, new_w, new_h, cv2.INTER_NEAREST)
        changes["mask"] = mask
    return sample.replace(**changes)


def letterbox_scale(orig_size: tuple[int, int], size: int) -> float:
    """The factor that fits an image of ``orig_size`` (height, width) into a ``size`` square."""
    return min(size / orig_size[0], size / orig_size[1])


def content_shape(orig_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(height, width) of an image of ``orig_size`` on the letterbox canvas: at least one pixel each
    way, however thin the image (a 10000x40 image at 64 px would otherwise round to no rows)."""
    return max(1, round(orig_size[0] * scale)), max(1, round(orig_size[1] * scale))


def _resize(array: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    if array.shape[:2] == (height, width):
        return array
    return cv2.resize(array, (width, height), interpolation=interpolation)
