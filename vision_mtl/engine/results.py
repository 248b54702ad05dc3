"""Per-image results in original image coordinates: what evaluation, inference and writers consume.

The one inverse of the letterbox (``vision_mtl.data.transforms.letterbox``): every path that turns
network outputs into answers about the user's image (PyTorch or ONNX inference, evaluation) goes
through :func:`split_predictions` / :func:`restore_mask`, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from vision_mtl.data.transforms import content_shape

MaskT = TypeVar("MaskT", torch.Tensor, np.ndarray)
Predictions = dict[str, dict[str, torch.Tensor]]  # {task: {name: batched tensor}}, as the heads' predict gives


@dataclass
class ImageResult:
    """Predictions for one image, mapped back from the letterboxed network input to the file's pixels.

    class_scores: [C] probabilities. boxes: [n, 4] xyxy, scores: [n], labels: [n] class indices.
    mask: HxW class ids at the original size. classes: each task's class names, where known
    (the :class:`~vision_mtl.inference.predictor.Predictor` fills them in). A task the model was not
    asked for stays None.
    """

    meta: dict[str, Any] = field(default_factory=dict)
    class_scores: np.ndarray | None = None
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None
    classes: dict[str, list[str]] = field(default_factory=dict)

    def label_names(self) -> list[str]:
        """The class name of each detection."""
        names = self.classes["detection"]
        return [names[int(label)] for label in self.labels]

    def top_classes(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` best classification classes as (name, score), best first (ties: lower index first)."""
        order = np.argsort(-self.class_scores, kind="stable")[:k]
        return [(self.classes["classification"][i], float(self.class_scores[i])) for i in order]


def split_predictions(preds: Predictions, metas: list[dict[str, Any]]) -> list[ImageResult]:
    """Cut batched head predictions into per-image results at original resolution.

    Relies on the letterbox convention (content at the top-left, scaled by ``meta["scale"]``).
    Boxes are clipped to the original image; those left empty (they lay in the padding) are dropped.
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
            boxes = clip_boxes(det["boxes"][i, :n] / scale, height, width)
            # a box in the letterbox padding is empty once clipped to the image: not a detection
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            result.boxes = boxes[keep].numpy()
            result.scores, result.labels = det["scores"][i, :n][keep].numpy(), det["labels"][i, :n][keep].numpy()
        if "segmentation" in cpu:
            mask = cpu["segmentation"]["mask"][i].numpy()  # resized as the smallest dtype its ids fit: 8x less to move
            result.mask = restore_mask(mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.int32), meta)
        results.append(result)
    return results


def restore_mask(mask: MaskT, meta: dict[str, Any]) -> MaskT:
    """A letterboxed [H, W] class-id mask (tensor on any device, or numpy array) at the image's
    original size: crop the content, then nearest-neighbour resize by integer index arithmetic
    (exact, the same on every device; numpy's row/column gathers are the fastest on the CPU)."""
    height, width = meta["orig_size"]
    content_height, content_width = content_shape((height, width), meta["scale"])
    content = mask[:content_height, :content_width]
    rows = np.arange(height) * content.shape[0] // height
    cols = np.arange(width) * content.shape[1] // width
    if isinstance(content, np.ndarray):
        return content[rows][:, cols]
    return content.index_select(0, torch.from_numpy(rows).to(mask.device)).index_select(
        1, torch.from_numpy(cols).to(mask.device))


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """xyxy boxes clipped to the image (torchvision's ``clip_boxes_to_image`` without importing
    torchvision, which costs folder inference of an ONNX model a second of start-up)."""
    limits = boxes.new_tensor([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), limits)


def coco_detections(result: ImageResult, category_ids: list[int]) -> list[dict[str, Any]]:
    """One image's detections as COCO results entries (xywh boxes, original category ids)."""
    out = []
    for box, score, label in zip(result.boxes, result.scores, result.labels):
        x1, y1, x2, y2 = (float(v) for v in box)
        out.append({"image_id": result.meta["image_id"], "category_id": category_ids[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return out
