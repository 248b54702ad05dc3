"""Head losses without host syncs: same values and gradients as the boolean-indexing losses they
replaced, no data-dependent op anywhere in a loss or its backward, zero connected losses without labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from vision_mtl.config import ClassificationConfig, DetectionConfig, SegmentationConfig
from vision_mtl.models.heads.classification import ClassificationHead
from vision_mtl.models.heads.detection import DetectionHead, centerness_target, giou_loss, ltrb_to_boxes
from vision_mtl.models.heads.segmentation import SegmentationHead

SIZE = 64
CHANNELS = 16
NUM_CLASSES = 4
IGNORE = 255


# ------------------------------------------------------------------------------------------------
# REFERENCE: the head losses as they were at commit 0028e46 (boolean indexing, `bool(valid.any())`),
# copied verbatim but for taking the head as an argument. The new losses must match them.

def reference_zero_loss(raw, names):
    anchor = sum(t.sum() for t in raw.values() if t.is_floating_point() and t.requires_grad)
    if not isinstance(anchor, torch.Tensor):
        anchor = next(iter(raw.values())).new_zeros(()).float()
    return {name: anchor * 0.0 for name in names}


def reference_classification_loss(head, raw, targets):
    valid = targets["valid"]
    if not bool(valid.any()):
        return reference_zero_loss(raw, ("ce",))
    logits = raw["logits"][valid]
    labels = targets["labels"][valid]
    if head.multi_label:
        return {"ce": F.binary_cross_entropy_with_logits(logits, labels.float())}
    return {"ce": F.cross_entropy(logits, labels, label_smoothing=head.label_smoothing)}


def reference_detection_loss(head, raw, targets):
    valid = targets["valid"]
    if not bool(valid.any()):
        return reference_zero_loss(raw, ("cls", "box", "centerness"))
    cls_logits = raw["cls_logits"][valid]
    pred_ltrb = raw["box_ltrb"][valid]
    ctr_logits = raw["centerness"][valid]
    positive, labels, target_ltrb = head.assign(raw["points"], raw["strides"],
                                                targets["boxes"][valid], targets["labels"][valid])
    num_pos = positive.sum().clamp(min=1).float()

    cls_target = F.one_hot(labels.clamp(min=0), head.num_classes).to(cls_logits.dtype)
    cls_target = cls_target * positive.unsqueeze(-1)
    loss_cls = sigmoid_focal_loss(cls_logits, cls_target, head.cfg.focal_alpha, head.cfg.focal_gamma,
                                  reduction="sum") / num_pos

    points = raw["points"].unsqueeze(0).expand_as(pred_ltrb[..., :2])[positive]
    ctr_target = centerness_target(target_ltrb[positive])
    pred_boxes = ltrb_to_boxes(points, pred_ltrb[positive])
    true_boxes = ltrb_to_boxes(points, target_ltrb[positive])
    giou = generalized_box_iou_loss(pred_boxes, true_boxes, reduction="none")
    loss_box = (giou * ctr_target).sum() / ctr_target.sum().clamp(min=1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits[positive], ctr_target, reduction="sum") / num_pos
    return {"cls": loss_cls, "box": loss_box, "centerness": loss_ctr}


def reference_segmentation_loss(head, raw, targets):
    valid = targets["valid"]
    if not bool(valid.any()):
        return reference_zero_loss(raw, ("ce", "dice"))
    masks = targets["mask"][valid]
    logits = F.interpolate(raw["logits"][valid], size=masks.shape[-2:], mode="bilinear", align_corners=False)
    losses = {"ce": F.cross_entropy(logits, masks, ignore_index=head.ignore_index)}
    if (masks == head.ignore_index).all():
        losses["ce"] = logits.sum() * 0.0
    if head.dice_weight > 0:
        losses["dice"] = head.dice_weight * head.dice(logits, masks)
    return losses


REFERENCE = {ClassificationHead: reference_classification_loss, DetectionHead: reference_detection_loss,
             SegmentationHead: reference_segmentation_loss}
# ------------------------------------------------------------------------------------------------


def features(batch: int, levels) -> dict[int, torch.Tensor]:
    return {lv: torch.randn(batch, CHANNELS, max(1, SIZE // 2**lv), max(1, SIZE // 2**lv)) for lv in levels}


def random_boxes(count: int) -> torch.Tensor:
    """``count`` boxes of sides 4-60 px inside the image (sizes reach every FCOS level)."""
    side = 4 + torch.rand(count, 2) * 56
    corner = torch.rand(count, 2) * (SIZE - side)
    return torch.cat([corner, corner + side], dim=1)


def classification_case(valid: list[bool], seed: int, multi_label: bool = False):
    torch.manual_seed(seed)
    head = ClassificationHead(CHANNELS, NUM_CLASSES, ClassificationConfig(multi_label=multi_label))
    if multi_label:
        labels = (torch.rand(len(valid), NUM_CLASSES) > 0.5).float()
    else:  # unlabelled samples hold -1 (the collate's value) or garbage the loss must not read
        labels = torch.randint(0, NUM_CLASSES, (len(valid),))
        unlabelled = [i for i, v in enumerate(valid) if not v]
        labels[unlabelled] = -1
        labels[unlabelled[::2]] = 99
    return head, features(len(valid), head.levels), {"labels": labels, "valid": torch.tensor(valid)}


def detection_case(num_boxes: list[int], valid: list[bool], seed: int):
    """One sample per entry: ``num_boxes[i]`` boxes (0: a valid image without objects), -1 label padding."""
    torch.manual_seed(seed)
    head = DetectionHead(CHANNELS, NUM_CLASSES, DetectionConfig())
    most = max(num_boxes)
    boxes = torch.zeros(len(valid), most, 4)
    labels = torch.full((len(valid), most), -1, dtype=torch.int64)
    for i, n in enumerate(num_boxes):
        boxes[i, :n] = random_boxes(n)
        labels[i, :n] = torch.randint(0, NUM_CLASSES, (n,))
    targets = {"boxes": boxes, "labels": labels, "valid": torch.tensor(valid)}
    return head, features(len(valid), head.levels), targets


def segmentation_case(kinds: list[str], valid: list[bool], seed: int, dice_weight: float = 1.0):
    """Masks per sample: "mixed" (classes and some ignore), "ignored" (all 255), "garbage" (ids out of range)."""
    torch.manual_seed(seed)
    head = SegmentationHead(CHANNELS, NUM_CLASSES, SegmentationConfig(channels=CHANNELS, dice_weight=dice_weight))
    masks = torch.randint(0, NUM_CLASSES, (len(kinds), SIZE, SIZE))
    for i, kind in enumerate(kinds):
        if kind == "mixed":
            masks[i][torch.rand(SIZE, SIZE) < 0.2] = IGNORE
        elif kind == "ignored":
            masks[i] = IGNORE
        else:
            masks[i] = 7
    return head, features(len(kinds), head.levels), {"mask": masks, "valid": torch.tensor(valid)}


CASES = {
    "cls some valid": lambda: classification_case([True, False, True, True, False], seed=1),
    "cls one valid": lambda: classification_case([False, False, True], seed=2),
    "cls none valid": lambda: classification_case([False, False, False], seed=3),
    "cls all valid": lambda: classification_case([True, True, True, True], seed=4),
    "cls multi-label some valid": lambda: classification_case([True, False, True], seed=5, multi_label=True),
    "cls multi-label none valid": lambda: classification_case([False, False], seed=6, multi_label=True),
    "det some valid": lambda: detection_case([3, 5, 1, 2], [True, False, True, True], seed=7),
    "det valid without boxes": lambda: detection_case([0, 4, 2], [True, False, True], seed=8),
    "det only valid sample empty": lambda: detection_case([0, 3, 2], [True, False, False], seed=9),
    "det no box anywhere": lambda: detection_case([0, 0], [True, True], seed=10),
    "det none valid": lambda: detection_case([2, 3], [False, False], seed=11),
    "det all valid": lambda: detection_case([6, 1, 4], [True, True, True], seed=12),
    "seg some valid": lambda: segmentation_case(["mixed", "garbage", "mixed", "ignored"],
                                                [True, False, True, True], seed=13),
    "seg valid all ignored": lambda: segmentation_case(["ignored", "garbage", "ignored"],
                                                       [True, False, True], seed=14),
    "seg none valid": lambda: segmentation_case(["garbage", "mixed"], [False, False], seed=15),
    "seg all valid": lambda: segmentation_case(["mixed", "mixed"], [True, True], seed=16),
    "seg without dice": lambda: segmentation_case(["mixed", "garbage"], [True, False], seed=17, dice_weight=0.0),
}


def losses_and_grads(loss_fn, head, feats, targets):
    """Loss values and the gradient of their sum w.r.t. every head parameter (None where unreached)."""
    raw = head(feats)
    losses = loss_fn(raw, targets)
    params = list(head.parameters())
    grads = torch.autograd.grad(sum(losses.values()), params, allow_unused=True)
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("case", list(CASES))
def test_losses_and_gradients_match_the_indexing_reference(case):
    head, feats, targets = CASES[case]()
    losses, grads = losses_and_grads(head.loss, head, feats, targets)
    ref_losses, ref_grads = losses_and_grads(lambda r, t: REFERENCE[type(head)](head, r, t), head, feats, targets)
    assert losses.keys() == ref_losses.keys()
    for key in losses:
        assert torch.isfinite(losses[key]), key
        torch.testing.assert_close(losses[key], ref_losses[key], rtol=1e-5, atol=1e-7, msg=f"{case} {key}")
    for (name, _), grad, ref in zip(head.named_parameters(), grads, ref_grads):
        assert grad is not None and torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad, ref if ref is not None else torch.zeros_like(grad),
                                   rtol=1e-5, atol=1e-7, msg=f"{case} {name}")


def test_giou_loss_matches_torchvision_values_and_gradients():
    """The sync-free GIoU against torchvision's on overlapping, disjoint, touching, nested and degenerate pairs."""
    torch.manual_seed(0)
    boxes1, boxes2 = random_boxes(200), random_boxes(200)
    special = torch.tensor([[[0, 0, 4, 4], [10, 10, 20, 20]],  # disjoint
                            [[0, 0, 10, 10], [10, 0, 20, 10]],  # touching
                            [[0, 0, 10, 10], [2, 2, 5, 5]],  # nested
                            [[5, 5, 5, 5], [0, 0, 10, 10]],  # point box inside
                            [[5, 5, 5, 5], [5, 5, 5, 5]],  # two identical points
                            [[0, 0, 4, 0], [1, 0, 3, 6]]], dtype=torch.float32)  # zero height
    boxes1 = torch.cat([boxes1, special[:, 0]]).requires_grad_()
    boxes2 = torch.cat([boxes2, special[:, 1]])
    ours = giou_loss(boxes1, boxes2)
    theirs = generalized_box_iou_loss(boxes1, boxes2, reduction="none")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    weights = torch.rand(len(ours))
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), boxes1)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), boxes1)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=0)


def test_detection_case_has_positives_in_valid_and_invalid_samples():
    """Guard on the fixtures above: positives exist, also in the invalid sample the loss must leave out."""
    head, feats, targets = CASES["det some valid"]()
    raw = head(feats)
    positive, _, _ = head.assign(raw["points"], raw["strides"], targets["boxes"], targets["labels"])
    assert (positive & targets["valid"].unsqueeze(1)).sum() > 10 and positive[1].any()  # invalid sample 1 has some


@pytest.mark.parametrize("case", ["cls none valid", "cls multi-label none valid", "det none valid",
                                  "seg none valid", "seg valid all ignored"])
def test_no_labels_give_connected_zero_losses(case):
    head, feats, targets = CASES[case]()
    losses = head.loss(head(feats), targets)
    assert all(v.detach() == 0 for v in losses.values())
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, f"{name} is not in the graph (DDP would hang)"
        assert torch.isfinite(p.grad).all() and (p.grad == 0).all(), name


@pytest.mark.parametrize("case", list(CASES))
def test_losses_make_no_host_sync(case):
    """Run each loss and its backward on fake tensors: any op whose result the host must read
    (``bool``/``item``/``tolist``) or whose shape depends on data (boolean masks, ``nonzero``)
    raises there. On a GPU each of those ops is a stall of the training step."""
    head, feats, targets = CASES[case]()
    raw = {k: v.detach().requires_grad_(v.requires_grad) for k, v in head(feats).items()}
    with FakeTensorMode() as mode:
        fake_raw = {k: mode.from_tensor(v) for k, v in raw.items()}
        fake_targets = {k: mode.from_tensor(v) for k, v in targets.items()}
        losses = head.loss(fake_raw, fake_targets)
        inputs = [v for v in fake_raw.values() if v.requires_grad]
        grads = torch.autograd.grad(sum(losses.values()), inputs, allow_unused=True)
    assert all(g is not None for g in grads)  # every raw output stays in the graph


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU")
@pytest.mark.parametrize("case", list(CASES))
def test_losses_make_no_cuda_sync(case):
    head, feats, targets = CASES[case]()
    head = head.cuda()
    raw = head({lv: f.cuda() for lv, f in feats.items()})
    targets = {k: v.cuda() for k, v in targets.items()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sum(head.loss(raw, targets).values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
