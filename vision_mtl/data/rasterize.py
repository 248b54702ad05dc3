"""Object segments (COCO polygons or RLE) to pixels with pycocotools, and instances to a semantic mask."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from vision_mtl.data.records import Instances, Segment
from vision_mtl.data.sample import IGNORE_INDEX


def _rle(segment: Segment, height: int, width: int) -> dict:
    if isinstance(segment, dict):
        if isinstance(segment["counts"], list):  # uncompressed RLE (as COCO writes crowd regions)
            return mask_utils.frPyObjects(segment, *segment["size"])
        return segment
    return mask_utils.merge(mask_utils.frPyObjects(segment, height, width))


def segment_mask(segment: Segment, height: int, width: int) -> np.ndarray:
    """HxW uint8 0/1 mask of one object; an RLE of another size is resized to (height, width)."""
    mask = mask_utils.decode(_rle(segment, height, width))
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return mask


def segment_area(segment: Segment, height: int, width: int) -> float:
    """Pixel area of a segment, as COCO's ``area`` field counts it."""
    return float(mask_utils.area(_rle(segment, height, width)))


def semantic_mask(instances: Instances, values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxW uint8 class mask: 0 background, ``values[i]`` under object ``i``.

    Crowd regions and objects without a segment (we know their box, not their pixels) are ignore;
    objects are painted largest first so that small ones in front of large ones stay visible.
    """
    height, width = size
    mask = np.zeros((height, width), np.uint8)
    painted = []
    for i, segment in enumerate(instances.segments):
        if instances.crowd[i] or segment is None:
            if segment is None:
                x1, y1, x2, y2 = instances.boxes[i]
                mask[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = IGNORE_INDEX
            else:
                mask[segment_mask(segment, height, width) > 0] = IGNORE_INDEX
        else:
            painted.append(i)
    for i in sorted(painted, key=lambda i: -instances.areas[i]):
        mask[segment_mask(instances.segments[i], height, width) > 0] = values[i]
    return mask
