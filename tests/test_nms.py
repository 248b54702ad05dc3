"""vision_mtl::multiclass_nms: greedy NMS per image and class, the same in PyTorch and in both ONNX exporters."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from torch import nn
from torchvision.ops import nms

from vision_mtl.export.nms_onnx import dynamo_translations, register_torchscript_symbolic
from vision_mtl.models.heads.nms import multiclass_nms

IOU, SCORE = 0.5, 0.1


def candidates(batch: int = 3, count: int = 60, classes: int = 4, seed: int = 0):
    """Crowded boxes (many overlaps within and across classes), scores in [0, 1), class ids."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, count, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 10 + torch.rand(batch, count, 2, generator=g) * 20], -1)
    return boxes, torch.rand(batch, count, generator=g), torch.randint(0, classes, (batch, count), generator=g)


def reference_keep(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """torchvision's nms run separately for every image and class."""
    keep = torch.zeros(scores.shape, dtype=torch.bool)
    for b in range(scores.shape[0]):
        for c in labels[b].unique():
            idx = torch.nonzero((labels[b] == c) & (scores[b] > SCORE)).squeeze(1)
            keep[b, idx[nms(boxes[b, idx], scores[b, idx], IOU)]] = True
    return keep


def test_keeps_what_nms_per_image_and_class_keeps():
    boxes, scores, labels = candidates()
    keep = multiclass_nms(boxes, scores, labels, 4, IOU, SCORE)
    expected = reference_keep(boxes, scores, labels)
    assert torch.equal(keep, expected)
    assert 0 < keep.sum() < (scores > SCORE).sum()  # some suppressed, some kept: the case is not trivial


def test_an_image_never_suppresses_another_and_a_class_never_another():
    boxes, scores, labels = candidates(batch=1)
    twice = multiclass_nms(boxes.repeat(2, 1, 1), scores.repeat(2, 1), labels.repeat(2, 1), 4, IOU, SCORE)
    assert torch.equal(twice[0], twice[1])  # the same boxes in two images: each image keeps its own
    same_box = torch.stack([boxes[0, 0], boxes[0, 0]])[None]  # one box twice: suppressed only within a class
    assert torch.equal(multiclass_nms(same_box, torch.tensor([[0.9, 0.8]]), torch.tensor([[0, 1]]), 4, 0.5, 0.0),
                       torch.tensor([[True, True]]))
    assert torch.equal(multiclass_nms(same_box, torch.tensor([[0.9, 0.8]]), torch.tensor([[2, 2]]), 4, 0.5, 0.0),
                       torch.tensor([[True, False]]))


class KeepMask(nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return multiclass_nms(boxes, scores, labels, 4, IOU, SCORE)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_exported_graph_keeps_the_same_boxes(tmp_path, exporter):
    boxes, scores, labels = candidates()
    path = tmp_path / "nms.onnx"
    names = ["boxes", "scores", "labels"]
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.onnx.export(KeepMask(), (boxes, scores, labels), str(path), dynamo=True, input_names=names,
                          dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), custom_translation_table=dynamo_translations())
    else:
        register_torchscript_symbolic()
        torch.onnx.export(KeepMask(), (boxes, scores, labels), str(path), dynamo=False, input_names=names,
                          opset_version=17, dynamic_axes={n: {0: "batch"} for n in names})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed in (0, 1):  # the second set was not the example the graph was traced with
        boxes, scores, labels = candidates(batch=2 + seed, seed=seed)
        (got,) = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy(), "labels": labels.numpy()})
        assert torch.equal(torch.from_numpy(got), reference_keep(boxes, scores, labels))
