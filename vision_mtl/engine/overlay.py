"""Overlay pictures of a result: the segmentation blended in, boxes with class names and scores,
and the image's class in the corner. For people checking a model by eye, not for metrics."""

from __future__ import annotations

import cv2
import numpy as np

from vision_mtl.engine.results import ImageResult
from vision_mtl.utils.colors import palette

MASK_ALPHA = 0.45


def draw_overlay(image: np.ndarray, result: ImageResult, multi_label: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB image with ``result`` drawn on it (a new array; ``image`` is untouched).
    A segmentation class named ``background`` is left unpainted."""
    canvas = image.copy()
    if result.mask is not None:
        names = result.classes["segmentation"]
        colours = palette(len(names))
        painted = np.isin(result.mask, [i for i, n in enumerate(names) if n != "background"])
        blended = (1 - MASK_ALPHA) * canvas[painted] + MASK_ALPHA * colours[result.mask[painted].clip(0, len(names) - 1)]
        canvas[painted] = blended.round().astype(np.uint8)
    thickness = max(1, round(min(image.shape[:2]) / 300))
    if result.boxes is not None:
        colours = palette(len(result.classes["detection"]))
        for box, score, label, name in zip(result.boxes, result.scores, result.labels, result.label_names()):
            colour = tuple(int(c) for c in colours[int(label)])
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
            _label(canvas, f"{name} {score:.2f}", (x1, y1), colour)
    if result.class_scores is not None:
        if multi_label:
            names = [name for name, score in result.top_classes(len(result.class_scores)) if score >= 0.5]
            text = ", ".join(names) or "(no class)"
        else:
            name, score = result.top_classes(1)[0]
            text = f"{name} {score:.2f}"
        _label(canvas, text, (0, 0), (255, 255, 255), below=True)
    return canvas


def _label(canvas: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, ...], below: bool = False) -> None:
    """Text on a filled box of ``colour``, above ``corner`` (inside the image), or below it."""
    scale = max(0.35, min(canvas.shape[:2]) / 900)
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = min(max(corner[0], 0), max(0, canvas.shape[1] - width))
    top = corner[1] if below or corner[1] - height - baseline < 0 else corner[1] - height - baseline
    cv2.rectangle(canvas, (x, top), (x + width, top + height + baseline), colour, -1)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(canvas, text, (x, top + height), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)
