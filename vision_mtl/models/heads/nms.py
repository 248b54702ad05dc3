"""Per-image, per-class NMS of a batch as one operator, so each runtime gets its fastest form:
torchvision's ``batched_nms`` in PyTorch, and ONNX's own ``NonMaxSuppression`` over its batch and
class axes in exported graphs.

Why an operator of our own: torchvision's ``nms`` exports as one ONNX NMS over a single group, so a
batch's boxes had to be kept apart by shifting each (image, class) group's coordinates. onnxruntime
then compares every candidate with every box kept so far, whatever its group: 16 images x 1,000
candidates took 93 ms against 4.7 ms with the groups on ONNX's axes (same boxes kept;
docs/benchmarks.md).
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms


@torch.library.custom_op("vision_mtl::multiclass_nms", mutates_args=())
def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   iou_threshold: float, score_threshold: float) -> torch.Tensor:
    """Keep mask [B, K] of candidates ``boxes`` [B, K, 4] (xyxy) with ``scores`` [B, K] and ``labels``
    [B, K] (class ids below ``num_classes``): greedy NMS within each image and class, among the
    candidates scoring above ``score_threshold``; a box goes when its IoU with a kept one exceeds
    ``iou_threshold``."""
    batch, count = scores.shape
    flat_scores = scores.reshape(-1).float()
    candidates = torch.nonzero(flat_scores > score_threshold).squeeze(1)
    groups = (torch.arange(batch, device=scores.device).unsqueeze(1) * num_classes + labels).reshape(-1)
    kept = batched_nms(boxes.reshape(-1, 4)[candidates].float(), flat_scores[candidates], groups[candidates],
                       iou_threshold)
    keep = torch.zeros(batch * count, dtype=torch.bool, device=scores.device)
    keep[candidates[kept]] = True
    return keep.view(batch, count)


@multiclass_nms.register_fake
def _(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, num_classes: int, iou_threshold: float,
      score_threshold: float) -> torch.Tensor:
    return torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
