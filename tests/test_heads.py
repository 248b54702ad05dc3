"""The three task heads: shapes, partial labels, empty batches, assignment and overfitting one batch."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from conftest import TINY_MODEL
from vision_mtl.config import DetectionConfig, SegmentationConfig, ClassificationConfig, load_config
from vision_mtl.models import build_model
from vision_mtl.models.heads.classification import ClassificationHead
from vision_mtl.models.heads.detection import DetectionHead
from vision_mtl.models.heads.segmentation import SegmentationHead

TASKS = ("classification", "detection", "segmentation")
CLASSES = {"classification": ["a", "b", "c", "d"], "detection": ["a", "b", "c", "d"],
           "segmentation": ["bg", "a", "b", "c", "d"]}
SIZE = 64
COLOURS = ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 1.0, 0.0))
# two images: one box, and two boxes (so image 0 has a padding row)
SCENE_BOXES = [[(8, 8, 40, 40)], [(28, 30, 60, 60), (4, 4, 20, 22)]]
SCENE_LABELS = [[1], [2, 0]]


def tiny_model(*tasks: str, extra: tuple[str, ...] = ()):
    cfg = load_config(None, [*TINY_MODEL, f"model.tasks=[{', '.join(tasks)}]", *extra])
    return build_model(cfg.model, CLASSES), cfg


def scene():
    """Two 64 px images of solid boxes on grey, with every task's targets (all valid)."""
    images = torch.full((2, 3, SIZE, SIZE), 0.5)
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.int64)
    boxes = torch.zeros(2, 2, 4)
    labels = torch.full((2, 2), -1, dtype=torch.int64)
    for b, (bs, ls) in enumerate(zip(SCENE_BOXES, SCENE_LABELS)):
        for j, ((x1, y1, x2, y2), lab) in enumerate(zip(bs, ls)):
            images[b, :, y1:y2, x1:x2] = torch.tensor(COLOURS[lab]).view(3, 1, 1)
            mask[b, y1:y2, x1:x2] = lab + 1
            boxes[b, j] = torch.tensor([x1, y1, x2, y2], dtype=torch.float32)
            labels[b, j] = lab
    valid = torch.ones(2, dtype=torch.bool)
    targets = {
        "classification": {"labels": torch.tensor([1, 2]), "valid": valid.clone()},
        "detection": {"boxes": boxes, "labels": labels, "valid": valid.clone()},
        "segmentation": {"mask": mask, "valid": valid.clone()},
    }
    return images, targets


def random_features(batch: int, channels: int = 16, size: int = SIZE, levels=range(2, 8), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {lv: torch.randn(batch, channels, max(1, size // 2**lv), max(1, size // 2**lv), generator=g)
            for lv in levels}


# ----------------------------------------------------------------------------------------- shapes

def test_forward_and_predict_shapes_all_heads():
    torch.manual_seed(0)
    model, cfg = tiny_model(*TASKS, extra=("model.detection.max_detections=7",))
    images, _ = scene()
    raw = model(images)
    assert set(raw) == set(TASKS)
    num_points = sum(max(1, SIZE // 2**lv) ** 2 for lv in cfg.model.detection.levels)
    assert raw["classification"]["logits"].shape == (2, 4)
    assert raw["detection"]["cls_logits"].shape == (2, num_points, 4)
    assert raw["detection"]["box_ltrb"].shape == (2, num_points, 4)
    assert (raw["detection"]["box_ltrb"] >= 0).all()
    assert raw["detection"]["centerness"].shape == (2, num_points)
    assert raw["detection"]["points"].shape == (num_points, 2)
    assert raw["detection"]["strides"].shape == (num_points,)
    finest = 2 ** min(cfg.model.segmentation.levels)
    assert raw["segmentation"]["logits"].shape == (2, 5, SIZE // finest, SIZE // finest)

    preds = model.predict(raw, (SIZE, SIZE))
    scores = preds["classification"]["scores"]
    assert scores.shape == (2, 4)
    torch.testing.assert_close(scores.sum(1), torch.ones(2))
    det = preds["detection"]
    assert det["boxes"].shape == (2, 7, 4)
    assert det["scores"].shape == (2, 7)
    assert det["labels"].shape == (2, 7)
    assert det["num"].shape == (2,)
    assert preds["segmentation"]["mask"].shape == (2, SIZE, SIZE)
    assert preds["segmentation"]["mask"].min() >= 0 and preds["segmentation"]["mask"].max() < 5


LN3 = math.log(3.0)


def test_classification_multi_label_scores_and_loss_by_hand():
    """Per-class sigmoids and the mean binary cross-entropy over the valid rows' entries, worked out
    by hand: sigmoid(0) = 1/2, sigmoid(+-ln 3) = 3/4, 1/4. label_smoothing is for the multi-class
    loss only; multi-hot targets are used as they are."""
    head = ClassificationHead(16, 3, ClassificationConfig(multi_label=True, label_smoothing=0.1))
    logits = torch.tensor([[0.0, LN3, -LN3], [5.0, -5.0, 1.0], [LN3, -LN3, 0.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 1.0, 0.0], [float("nan"), 7.0, -1.0], [0.0, 0.0, 1.0]])  # row 1: unlabelled garbage
    targets = {"labels": labels, "valid": torch.tensor([True, False, True])}
    scores = head.predict({"logits": logits.detach()}, (SIZE, SIZE))["scores"]
    torch.testing.assert_close(scores[[0, 2]], torch.tensor([[0.5, 0.75, 0.25], [0.75, 0.25, 0.5]]))
    loss = head.loss({"logits": logits}, targets)["ce"]
    # row 0: -ln 1/2, -ln 3/4, -ln 3/4; row 2: -ln 1/4, -ln 3/4, -ln 1/2; mean of the six
    torch.testing.assert_close(loss, torch.tensor((4 * math.log(2) + 3 * math.log(4 / 3)) / 6))
    (grad,) = torch.autograd.grad(loss, logits)  # (sigmoid - target) / 6 on valid rows, nothing on the other
    torch.testing.assert_close(grad, torch.tensor([[-3.0, -1.5, 1.5], [0.0, 0.0, 0.0], [4.5, 1.5, -3.0]]) / 36)


def test_classification_label_smoothing_by_hand():
    """Multi-class cross-entropy with smoothing e over C classes, written as
    (1 - e) * -log p[label] + e * mean over classes of -log p, on the valid rows only."""
    head = ClassificationHead(16, 3, ClassificationConfig(label_smoothing=0.3))
    # softmax of [0, ln 2, ln 5] is [1/8, 2/8, 5/8]; of [ln 3, 0, 0] it is [3/5, 1/5, 1/5]
    logits = torch.tensor([[0.0, math.log(2), math.log(5)], [1.0, 2.0, 3.0], [LN3, 0.0, 0.0]])
    targets = {"labels": torch.tensor([2, 99, 0]), "valid": torch.tensor([True, False, True])}
    row0 = 0.7 * math.log(8 / 5) + 0.3 * (math.log(8) + math.log(4) + math.log(8 / 5)) / 3
    row2 = 0.7 * math.log(5 / 3) + 0.3 * (math.log(5 / 3) + 2 * math.log(5)) / 3
    torch.testing.assert_close(head.loss({"logits": logits}, targets)["ce"], torch.tensor((row0 + row2) / 2))


def test_segmentation_predict_resizes_to_requested_size():
    head = SegmentationHead(16, 3, SegmentationConfig(channels=16))
    raw = head(random_features(2, levels=range(2, 6)))
    mask = head.predict(raw, (48, 80))["mask"]
    assert mask.shape == (2, 48, 80) and mask.dtype == torch.int64


def _handmade_detection_raw(head: DetectionHead, hits: list[tuple[int, int, int, tuple[float, float, float, float]]],
                            batch: int = 2):
    """Raw output where only ``hits`` = (image, point, class, ltrb) score high."""
    raw = head(random_features(batch))
    n = raw["points"].shape[0]
    cls = torch.full((batch, n, head.num_classes), -20.0)
    ltrb = torch.full((batch, n, 4), 2.0)
    ctr = torch.full((batch, n), 20.0)
    for b, p, c, dist in hits:
        cls[b, p, c] = 10.0
        ltrb[b, p] = torch.tensor(dist)
    return {**raw, "cls_logits": cls, "box_ltrb": ltrb, "centerness": ctr}


def test_detection_predict_padding_nms_and_decoding():
    head = DetectionHead(16, 3, DetectionConfig(max_detections=5)).eval()
    raw = _handmade_detection_raw(head, [])
    points = raw["points"]
    # image 0: two same-class boxes on neighbouring points (overlapping -> NMS keeps one), one other class
    # box on the same spot as the first (kept: NMS is per class); image 1: a single box
    p_a, p_b = 0, 1
    assert torch.allclose(points[p_a], torch.tensor([4.0, 4.0])) and torch.allclose(points[p_b], torch.tensor([12.0, 4.0]))
    raw = _handmade_detection_raw(head, [(0, p_a, 0, (4.0, 4.0, 20.0, 20.0)), (0, p_b, 0, (12.0, 4.0, 12.0, 20.0)),
                                         (0, p_a, 2, (4.0, 4.0, 20.0, 20.0)), (1, p_b, 1, (2.0, 2.0, 2.0, 2.0))])
    raw["cls_logits"][0, p_b, 0] = 9.0  # the second same-class box scores lower -> suppressed
    out = head.predict(raw, (SIZE, SIZE))
    assert out["num"].tolist() == [2, 1]
    for b in range(2):
        n = int(out["num"][b])
        assert (out["labels"][b, n:] == -1).all()
        assert (out["scores"][b, n:] == 0).all()
        assert (out["boxes"][b, n:] == 0).all()
        assert (out["labels"][b, :n] >= 0).all()
        assert (out["scores"][b, :n] > head.cfg.score_thresh).all()
        assert torch.all(out["scores"][b, :-1] >= out["scores"][b, 1:])  # sorted best first
    assert sorted(out["labels"][0, :2].tolist()) == [0, 2]
    for j in range(2):
        torch.testing.assert_close(out["boxes"][0, j], torch.tensor([0.0, 0.0, 24.0, 24.0]))
    torch.testing.assert_close(out["boxes"][1, 0], torch.tensor([10.0, 2.0, 14.0, 6.0]))
    assert out["labels"][1, 0] == 1


def test_detection_predict_clips_boxes_to_image():
    head = DetectionHead(16, 2, DetectionConfig(max_detections=3)).eval()
    raw = _handmade_detection_raw(head, [(0, 0, 1, (50.0, 50.0, 100.0, 100.0))])
    out = head.predict(raw, (SIZE, 40))
    box = out["boxes"][0, 0]
    assert box[0] >= 0 and box[1] >= 0 and box[2] <= 40 and box[3] <= SIZE


# ------------------------------------------------------------------------------ no valid samples

@pytest.mark.parametrize("tasks", [(t,) for t in TASKS] + [TASKS], ids=lambda t: "+".join(t))
def test_no_valid_samples_gives_connected_zero_loss(tasks):
    torch.manual_seed(0)
    model, _ = tiny_model(*tasks)
    images, targets = scene()
    for task in tasks:
        targets[task]["valid"][:] = False
        if task == "classification":
            targets[task]["labels"][:] = -1  # what collate writes for unlabelled samples
    losses = model.loss(model(images), targets)
    total = 0
    for task in tasks:
        assert losses[task], f"{task} returned no loss components"
        for name, value in losses[task].items():
            assert value.dim() == 0 and torch.isfinite(value), f"{task}/{name}"
            assert float(value.detach()) == 0.0, f"{task}/{name}"
            total = total + value
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters outside the graph (DDP would hang): {missing[:5]}"
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())


def test_every_parameter_gets_a_gradient_with_partial_labels():
    torch.manual_seed(0)
    model, _ = tiny_model(*TASKS)
    images, targets = scene()
    targets["classification"]["valid"][1] = False
    targets["detection"]["valid"][0] = False
    losses = model.loss(model(images), targets)
    sum(v for parts in losses.values() for v in parts.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


# ------------------------------------------------------------------------------- partial labels

def test_classification_partial_labels_equal_valid_only_loss():
    head = ClassificationHead(16, 4, ClassificationConfig())
    feats = {lv: f.requires_grad_() for lv, f in random_features(4).items()}
    raw = head(feats)
    valid = torch.tensor([True, False, True, False])
    labels = torch.tensor([2, -1, 0, 99])  # invalid rows hold garbage the loss must never read
    loss = head.loss(raw, {"labels": labels, "valid": valid})["ce"]
    alone = head.loss({"logits": raw["logits"][valid]}, {"labels": labels[valid], "valid": torch.ones(2, dtype=torch.bool)})["ce"]
    assert torch.equal(loss, alone)
    (grad,) = torch.autograd.grad(loss, raw["logits"])
    assert (grad[~valid] == 0).all() and (grad[valid] != 0).any()


def test_segmentation_partial_labels_equal_valid_only_loss():
    head = SegmentationHead(16, 3, SegmentationConfig(channels=16))
    raw = head(random_features(3, levels=range(2, 6)))
    g = torch.Generator().manual_seed(1)
    mask = torch.randint(0, 3, (3, SIZE, SIZE), generator=g)
    mask[0, :8] = 255
    mask[1] = 7  # invalid sample: out-of-range ids that would break the loss if read
    valid = torch.tensor([True, False, True])
    losses = head.loss(raw, {"mask": mask, "valid": valid})
    alone = head.loss({"logits": raw["logits"][valid]}, {"mask": mask[valid], "valid": torch.ones(2, dtype=torch.bool)})
    assert losses.keys() == alone.keys() == {"ce", "dice"}
    for key in losses:
        torch.testing.assert_close(losses[key], alone[key], rtol=0, atol=1e-7)
    (grad,) = torch.autograd.grad(sum(losses.values()), raw["logits"])
    assert (grad[~valid] == 0).all()


def test_segmentation_fully_ignored_mask_is_finite():
    head = SegmentationHead(16, 3, SegmentationConfig(channels=16))
    raw = head(random_features(2, levels=range(2, 6)))
    losses = head.loss(raw, {"mask": torch.full((2, SIZE, SIZE), 255), "valid": torch.tensor([True, True])})
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_detection_partial_labels_equal_batch_of_valid_samples():
    head = DetectionHead(16, 3, DetectionConfig())
    raw = head(random_features(3))
    # sample 1 is invalid and holds the most boxes, so the full batch has more padding than the subset
    boxes = torch.zeros(3, 4, 4)
    labels = torch.full((3, 4), -1, dtype=torch.int64)
    boxes[0, :1] = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    labels[0, :1] = torch.tensor([1])
    boxes[1] = torch.tensor([[0.0, 0.0, 64.0, 64.0], [4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 50.0, 60.0], [1.0, 1.0, 9.0, 9.0]])
    labels[1] = torch.tensor([0, 1, 2, 0])
    boxes[2, :2] = torch.tensor([[28.0, 30.0, 60.0, 60.0], [4.0, 4.0, 20.0, 22.0]])
    labels[2, :2] = torch.tensor([2, 0])
    valid = torch.tensor([True, False, True])
    loss = head.loss(raw, {"boxes": boxes, "labels": labels, "valid": valid})

    keep = valid.nonzero().squeeze(1)
    sub_raw = {k: (v[keep] if k in ("cls_logits", "box_ltrb", "centerness") else v) for k, v in raw.items()}
    sub_targets = {"boxes": boxes[keep, :2], "labels": labels[keep, :2], "valid": torch.ones(2, dtype=torch.bool)}
    alone = head.loss(sub_raw, sub_targets)
    assert loss.keys() == alone.keys() == {"cls", "box", "centerness"}
    for key in loss:
        assert torch.isfinite(loss[key])
        torch.testing.assert_close(loss[key], alone[key], rtol=1e-6, atol=1e-7)
    grads = torch.autograd.grad(sum(loss.values()), [raw["cls_logits"], raw["box_ltrb"], raw["centerness"]],
                                allow_unused=True)
    for grad in grads:
        assert grad is None or (grad[~valid] == 0).all()


# ----------------------------------------------------------------------------------- assignment

def _points_and_strides(head: DetectionHead):
    raw = head(random_features(2))
    return raw["points"], raw["strides"]


def test_assign_single_box_positives_inside_box_with_its_class():
    head = DetectionHead(16, 4, DetectionConfig())
    points, strides = _points_and_strides(head)
    box = torch.tensor([[[10.0, 14.0, 42.0, 50.0]]])
    positive, labels, ltrb = head.assign(points, strides, box, torch.tensor([[3]]))
    assert positive.shape == labels.shape == (1, points.shape[0]) and ltrb.shape == (1, points.shape[0], 4)
    assert positive.any()
    x, y = points[:, 0], points[:, 1]
    inside = (x > 10) & (x < 42) & (y > 14) & (y < 50)
    assert not (positive[0] & ~inside).any()
    assert (labels[0][positive[0]] == 3).all()
    assert (labels[0][~positive[0]] == -1).all()
    # regression targets are the distances from each positive point to the box sides
    pos = positive[0]
    expected = torch.stack([x - 10, y - 14, 42 - x, 50 - y], dim=1)[pos]
    torch.testing.assert_close(ltrb[0][pos], expected)


def test_assign_smallest_box_wins_and_each_point_takes_its_box_class():
    head = DetectionHead(16, 4, DetectionConfig())
    points, strides = _points_and_strides(head)
    boxes = torch.tensor([[[0.0, 0.0, 60.0, 60.0], [16.0, 16.0, 40.0, 40.0]]])
    positive, labels, ltrb = head.assign(points, strides, boxes, torch.tensor([[0, 2]]))
    x, y = points[:, 0], points[:, 1]
    in_small = (x > 16) & (x < 40) & (y > 16) & (y < 40) & (strides == 8)
    both = positive[0] & in_small
    assert both.any()
    assert (labels[0][both] == 2).all()


def test_assign_ignores_padding_rows():
    head = DetectionHead(16, 4, DetectionConfig())
    points, strides = _points_and_strides(head)
    # a padding row whose coordinates describe a real-looking box must still give nothing
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0], [8.0, 8.0, 40.0, 40.0]], [[8.0, 8.0, 40.0, 40.0], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-1, -1], [1, -1]])
    positive, matched, _ = head.assign(points, strides, boxes, labels)
    assert not positive[0].any()
    assert (matched[0] == -1).all()
    assert positive[1].any() and (matched[1][positive[1]] == 1).all()


def test_image_without_boxes_in_batch_gets_no_positives_and_finite_loss():
    head = DetectionHead(16, 4, DetectionConfig())
    raw = head(random_features(2))
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0]], [[0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1], [-1]])  # image 1 is labelled for detection but has no objects
    positive, _, _ = head.assign(raw["points"], raw["strides"], boxes, labels)
    assert positive[0].any() and not positive[1].any()
    losses = head.loss(raw, {"boxes": boxes, "labels": labels, "valid": torch.tensor([True, True])})
    assert all(torch.isfinite(v) for v in losses.values())
    # the empty image still trains the classifier towards background
    grad = torch.autograd.grad(losses["cls"], raw["cls_logits"])[0]
    assert (grad[1] > 0).any()


def test_batch_where_no_image_has_boxes_gives_finite_loss():
    head = DetectionHead(16, 4, DetectionConfig())
    raw = head(random_features(2))
    targets = {"boxes": torch.zeros(2, 0, 4), "labels": torch.zeros(2, 0, dtype=torch.int64),
               "valid": torch.tensor([True, True])}
    positive, _, _ = head.assign(raw["points"], raw["strides"], targets["boxes"], targets["labels"])
    assert not positive.any()
    losses = head.loss(raw, targets)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_detection_runs_on_a_single_image_with_32_channels(mode):
    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=test_resnet", "model.neck_channels=32", "model.tasks=[detection]"])
    model = build_model(cfg.model, CLASSES).train(mode == "train")
    images = torch.rand(1, 3, 128, 128)
    with torch.set_grad_enabled(mode == "train"):
        raw = model(images)
    preds = model.predict(raw, (128, 128))["detection"]
    assert preds["boxes"].shape[0] == 1


# ------------------------------------------------------------------------------------- overfit

def _overfit(task: str, steps: int, lr: float, extra: tuple[str, ...] = ()):
    torch.manual_seed(0)
    model, _ = tiny_model(task, extra=extra)
    images, targets = scene()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    first = last = None
    for _ in range(steps):
        parts = model.loss(model(images), {task: targets[task]})[task]
        if first is None:
            first = {k: float(v.detach()) for k, v in parts.items()}
        optimizer.zero_grad()
        sum(parts.values()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        last = {k: float(v) for k, v in model.loss(model(images), {task: targets[task]})[task].items()}
        preds = model.predict(model(images), (SIZE, SIZE))[task]
    return first, last, preds, targets[task]


def test_classification_overfits_one_batch():
    first, last, preds, targets = _overfit("classification", 150, 3e-3, ("model.classification.label_smoothing=0",))
    assert last["ce"] < 0.1 * first["ce"]
    assert torch.equal(preds["scores"].argmax(1), targets["labels"])


def test_segmentation_overfits_one_batch():
    first, last, preds, targets = _overfit("segmentation", 100, 3e-3)
    assert sum(last.values()) < 0.1 * sum(first.values())
    agreement = (preds["mask"] == targets["mask"]).float().mean()
    assert agreement >= 0.9


def test_detection_overfits_one_batch():
    first, last, preds, targets = _overfit("detection", 150, 3e-3)
    # centerness is BCE against soft targets, so it keeps a floor; class and box losses must collapse
    assert last["cls"] < 0.2 * first["cls"]
    assert last["box"] < 0.2 * first["box"]
    assert sum(last.values()) < 0.5 * sum(first.values())
    for b in range(2):
        n = int(preds["num"][b])
        assert n > 0
        boxes, scores, labels = preds["boxes"][b, :n], preds["scores"][b, :n], preds["labels"][b, :n]
        gt_valid = targets["labels"][b] >= 0
        for gt_box, gt_label in zip(targets["boxes"][b][gt_valid], targets["labels"][b][gt_valid]):
            same = labels == gt_label
            assert same.any(), f"image {b}: no detection of class {int(gt_label)}"
            best = scores.masked_fill(~same, -1).argmax()
            iou = box_iou(gt_box[None], boxes[best][None])[0, 0]
            assert iou > 0.5, f"image {b}: best class-{int(gt_label)} box IoU {float(iou):.2f}"
