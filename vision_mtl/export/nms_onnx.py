"""``vision_mtl::multiclass_nms`` in ONNX for both exporters: the candidates' scores spread onto a class
axis ([B, C, K], zero for the other classes, which the score threshold drops), one
``NonMaxSuppression`` over ONNX's batch and class axes, and its (image, class, box) triples scattered
back into the [B, K] keep mask the PyTorch operator returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
import torch
from onnxscript import opset18 as op
from torch.onnx import symbolic_helper

import vision_mtl.models.heads.nms  # noqa: F401 (registers torch.ops.vision_mtl.multiclass_nms)

_FLOAT = onnx.TensorProto.FLOAT
_EVERY_BOX = 2**31 - 1  # max_output_boxes_per_class: no limit beyond the candidates'
Node = Callable[..., Any]


def _keep_mask(node: Node, const: Callable[[torch.Tensor], Any], boxes: Any, scores: Any, labels: Any,
               num_classes: int, iou_threshold: float, score_threshold: float) -> Any:
    """The graph, written once for both exporters' node builders (``node(op_type, *inputs, **int_attrs)``)."""
    axis_1 = const(torch.tensor([1]))
    is_class = node("Equal", node("Unsqueeze", labels, axis_1), const(torch.arange(num_classes).view(1, -1, 1)))
    class_scores = node("Where", is_class, node("Unsqueeze", node("Cast", scores, to=_FLOAT), axis_1),
                        const(torch.tensor(0.0)))
    selected = node("NonMaxSuppression", node("Cast", boxes, to=_FLOAT), class_scores,
                    const(torch.tensor([_EVERY_BOX])), const(torch.tensor([iou_threshold])),
                    const(torch.tensor([score_threshold])))  # [n, 3]: image, class, box
    image_and_box = node("Gather", selected, const(torch.tensor([0, 2])), axis=1)
    ones = node("Expand", const(torch.tensor(1.0)), node("Shape", selected, start=0, end=1))
    zeros = node("Expand", const(torch.tensor(0.0)), node("Shape", scores))
    return node("Greater", node("ScatterND", zeros, image_and_box, ones), const(torch.tensor(0.0)))


def dynamo_translations() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""

    def translate(boxes: Any, scores: Any, labels: Any, num_classes: int, iou_threshold: float,
                  score_threshold: float) -> Any:
        return _keep_mask(lambda name, *inputs, **attrs: getattr(op, name)(*inputs, **attrs),
                          lambda value: op.Constant(value=onnx.numpy_helper.from_array(value.numpy())),
                          boxes, scores, labels, num_classes, iou_threshold, score_threshold)

    return {torch.ops.vision_mtl.multiclass_nms.default: translate}


@symbolic_helper.parse_args("v", "v", "v", "i", "f", "f")
def _symbolic(g: Any, boxes: Any, scores: Any, labels: Any, num_classes: int, iou_threshold: float,
              score_threshold: float) -> Any:
    return _keep_mask(lambda name, *inputs, **attrs: g.op(name, *inputs, **{f"{k}_i": v for k, v in attrs.items()}),
                      lambda value: g.op("Constant", value_t=value),
                      boxes, scores, labels, num_classes, iou_threshold, score_threshold)


def register_torchscript_symbolic() -> None:
    """Teach the TorchScript exporter the operator (opset 15 and later: Shape's start/end)."""
    torch.onnx.register_custom_op_symbolic("vision_mtl::multiclass_nms", _symbolic, 15)
