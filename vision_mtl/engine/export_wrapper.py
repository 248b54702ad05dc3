"""The export contract: :class:`ExportWrapper` turns the model's predictions into a fixed tuple of
named tensors (:data:`OUTPUTS`), and :func:`predictions_from_outputs` turns them back, so a graph's
outputs mean exactly what ``model.predict`` gives."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from vision_mtl.config import DetectionConfig
from vision_mtl.engine.results import Predictions

if TYPE_CHECKING:
    from vision_mtl.models import MultiTaskModel

# name -> (task, prediction key, meaning); a task's outputs come in the order its head gives them
OUTPUTS: dict[str, tuple[str, str, str]] = {
    "cls_scores": ("classification", "scores", "[B, C] float: softmax probabilities (multi-label: per-class sigmoids)"),
    "det_boxes": ("detection", "boxes", "[B, K, 4] float: xyxy in input pixels, best first, zeros past det_num"),
    "det_scores": ("detection", "scores", "[B, K] float: detection scores, 0 past det_num"),
    "det_labels": ("detection", "labels", "[B, K] int64: class indices, -1 past det_num"),
    "det_num": ("detection", "num", "[B] int64: detections per image (K = model.detection.max_detections)"),
    "det_candidate_boxes": ("detection", "candidate_boxes",
                            "[B, N, 4] float (--no-nms): every location's box, xyxy input pixels, before NMS"),
    "det_candidate_scores": ("detection", "candidate_scores",
                             "[B, N, C] float (--no-nms): every location's per-class score, before NMS"),
    "seg_mask": ("segmentation", "mask", "[B, H, W] int64: class ids at input size (argmax in graph)"),
    "seg_logits": ("segmentation", "logits", "[B, K, H, W] float (--seg-logits): class logits at input size"),
}


class ExportWrapper(nn.Module):
    """``model.predict(model(images))`` flattened into a tuple of named tensors (:attr:`output_names`).

    ``nms=False`` gives detection candidates instead of NMS'd detections, ``seg_logits=True``
    segmentation logits instead of the argmax mask. Postprocessing runs in float32 whatever the
    network's precision (NMS has no half-precision kernels).
    """

    def __init__(self, model: MultiTaskModel, nms: bool = True, seg_logits: bool = False):
        super().__init__()
        self.model = model.eval()
        self.nms = nms
        self.seg_logits = seg_logits
        self.eval()  # a fresh wrapper is in training mode, and export restores that mode on the model too

    @property
    def output_names(self) -> list[str]:
        names = {"classification": ["cls_scores"],
                 "detection": ["det_boxes", "det_scores", "det_labels", "det_num"] if self.nms
                 else ["det_candidate_boxes", "det_candidate_scores"],
                 "segmentation": ["seg_logits" if self.seg_logits else "seg_mask"]}
        return [name for task in self.model.tasks for name in names[task]]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = (images.shape[-2], images.shape[-1])
        raw = {task: {k: v.float() for k, v in r.items()} for task, r in self.model(images).items()}
        outputs: list[torch.Tensor] = []
        for task, head in self.model.heads.items():
            if task == "detection" and not self.nms:
                outputs.extend(head.decode(raw[task], size))
            elif task == "segmentation" and self.seg_logits:
                outputs.append(head.logits_at(raw[task], size))
            else:
                outputs.extend(head.predict(raw[task], size).values())
        return tuple(outputs)


def predictions_from_outputs(outputs: dict[str, torch.Tensor], detection: DetectionConfig) -> Predictions:
    """Named graph outputs back into the heads' predictions, finishing what the graph left out
    (NMS for ``--no-nms`` graphs, with the model's own thresholds; argmax for ``seg_logits``)."""
    preds: Predictions = {}
    for name, tensor in outputs.items():
        task, key, _ = OUTPUTS[name]
        preds.setdefault(task, {})[key] = tensor
    det = preds.get("detection", {})
    if "candidate_boxes" in det:
        from vision_mtl.models.heads.detection import select_detections  # torchvision: only for --no-nms graphs
        preds["detection"] = select_detections(det["candidate_boxes"], det["candidate_scores"], detection)
    if "logits" in preds.get("segmentation", {}):
        preds["segmentation"] = {"mask": preds["segmentation"]["logits"].argmax(dim=1)}
    return preds
