"""Per-image results in original image coordinates: what evaluation, inference and writers consume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch


@dataclass
class ImageResult:
    """Predictions for one image, mapped back from the letterboxed network input to the file's pixels.

    class_scores: [C] probabilities. boxes: [n, 4] xyxy, scores: [n], labels: [n] class indices.
    mask: HxW class ids at the original size.
    """

    meta: dict[str, Any] = field(default_factory=dict)
    class_scores: np.ndarray | None = None
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None


def split_predictions(preds: dict[str, dict[str, torch.Tensor]], metas: list[dict[str, Any]]) -> list[ImageResult]:
    """Cut batched head predictions into per-image results at original resolution.

    Relies on the letterbox convention (content at the top-left, scaled by ``meta["scale"]``).
    """
    cpu = {task: {k: v.cpu() for k, v in p.items()} for task, p in preds.items()}
    results = []
    for i, meta in enumerate(metas):
        scale = meta["scale"]
        height, width = meta["orig_size"]
        result = ImageResult(meta=meta)
        if "classification" in cpu:
            result.class_scores = cpu["classification"]["scores"][i].numpy()
        if "detection" in cpu:
            det = cpu["detection"]
            n = int(det["num"][i])
            boxes = det["boxes"][i, :n].numpy() / scale
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
            result.boxes, result.scores, result.labels = boxes, det["scores"][i, :n].numpy(), det["labels"][i, :n].numpy()
        if "segmentation" in cpu:
            content = cpu["segmentation"]["mask"][i, : round(height * scale), : round(width * scale)].numpy()
            mask = content.astype(np.uint8 if content.max(initial=0) < 256 else np.int32)
            if mask.shape != (height, width):
                mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
            result.mask = mask
        results.append(result)
    return results
