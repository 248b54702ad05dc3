"""Object detection: an FCOS-style anchor-free dense head (Tian et al. 2019) on P3-P7."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import clip_boxes_to_image, sigmoid_focal_loss

from vision_mtl.config import DetectionConfig
from vision_mtl.models.heads.base import Raw, TaskHead, conv_norm_act, masked_mean
from vision_mtl.models.heads.nms import multiclass_nms


class DetectionHead(TaskHead):
    """Shared conv towers over all levels predict per location: class logits, distances to the
    box sides (l, t, r, b in pixels) and a centerness logit.

    Training: ``targets["boxes"]`` float [B, M, 4] xyxy input pixels, ``targets["labels"]`` int64
    [B, M] with -1 for padding. Assignment is FCOS's (inside the box, inside a centre region of
    ``center_sampling_radius`` strides, box size within the level's range, smallest box wins),
    computed for the whole batch at once. Losses: sigmoid focal (classes), GIoU weighted by the
    centerness target (boxes), BCE (centerness), each normalised by the number of positives.
    ``predict`` = ``decode`` (box and class scores of every location) + :func:`select_detections`:
    padded ``boxes`` [B, K, 4], ``scores`` [B, K], ``labels`` [B, K] (-1 padding) and ``num`` [B],
    with K = ``max_detections``.
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: DetectionConfig):
        super().__init__()
        self.levels = sorted(cfg.levels)
        self.num_classes = num_classes
        self.cfg = cfg
        self.cls_tower = nn.Sequential(*[conv_norm_act(in_channels, in_channels) for _ in range(cfg.num_convs)])
        self.box_tower = nn.Sequential(*[conv_norm_act(in_channels, in_channels) for _ in range(cfg.num_convs)])
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.levels)))
        for conv in (self.cls_logits, self.box_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - 0.01) / 0.01))  # prior prob 0.01

    def forward(self, features: dict[int, torch.Tensor]) -> Raw:
        cls_out, box_out, ctr_out, points, strides = [], [], [], [], []
        for i, lv in enumerate(self.levels):
            x = features[lv]
            stride = 2**lv
            cls_feat, box_feat = self.cls_tower(x), self.box_tower(x)
            cls_out.append(self.cls_logits(cls_feat).flatten(2).transpose(1, 2))  # [B, HW, C]
            ltrb = F.relu(self.box_pred(box_feat) * self.scales[i]) * stride
            box_out.append(ltrb.flatten(2).transpose(1, 2))  # [B, HW, 4]
            ctr_out.append(self.centerness(box_feat).flatten(1))  # [B, HW]
            h, w = x.shape[-2:]
            ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) * stride  # float32 even in half precision
            xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) * stride
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1))  # [HW, 2]
            strides.append(torch.full((h * w,), float(stride), device=x.device))
        return {
            "cls_logits": torch.cat(cls_out, 1),
            "box_ltrb": torch.cat(box_out, 1),
            "centerness": torch.cat(ctr_out, 1),
            "points": torch.cat(points, 0),
            "strides": torch.cat(strides, 0),
        }

    def loss(self, raw: Raw, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        valid, cls_logits = targets["valid"], raw["cls_logits"]  # [B], [B, N, C]
        positive, labels, target_ltrb = self.assign(raw["points"], raw["strides"],
                                                    targets["boxes"], targets["labels"])
        positive = positive & valid.unsqueeze(1)  # [B, N]
        num_pos = positive.sum().clamp(min=1).float()

        cls_target = F.one_hot(labels.clamp(min=0), self.num_classes).to(cls_logits.dtype)
        cls_target = cls_target * positive.unsqueeze(-1)
        focal = sigmoid_focal_loss(cls_logits, cls_target, self.cfg.focal_alpha, self.cfg.focal_gamma,
                                   reduction="none")  # [B, N, C]
        loss_cls = torch.where(valid, focal.sum(dim=(1, 2)), 0).sum() / num_pos

        # every location is scored; the others get a unit box, so GIoU and centerness stay finite there
        keep = positive.unsqueeze(-1)
        pred_ltrb = torch.where(keep, raw["box_ltrb"], 1.0)  # [B, N, 4]
        target_ltrb = torch.where(keep, target_ltrb, 1.0)
        ctr_target = centerness_target(target_ltrb) * positive  # [B, N], zero off the positives
        pred_boxes = ltrb_to_boxes(raw["points"], pred_ltrb)
        true_boxes = ltrb_to_boxes(raw["points"], target_ltrb)
        giou = giou_loss(pred_boxes, true_boxes)  # [B, N]
        loss_box = (giou * ctr_target).sum() / ctr_target.sum().clamp(min=1e-6)
        ctr_bce = F.binary_cross_entropy_with_logits(raw["centerness"], ctr_target, reduction="none")
        return {"cls": loss_cls, "box": loss_box, "centerness": masked_mean(ctr_bce, positive)}

    @torch.no_grad()
    def assign(self, points: torch.Tensor, strides: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
        """FCOS assignment for a batch: returns positive [B, N], labels [B, N], target ltrb [B, N, 4]."""
        if boxes.shape[1] == 0:  # no image holds a box: one padding row keeps every shape below valid
            boxes, labels = boxes.new_zeros(len(boxes), 1, 4), labels.new_full((len(labels), 1), -1)
        x = points[:, 0].view(1, -1, 1)
        y = points[:, 1].view(1, -1, 1)
        x1, y1, x2, y2 = (boxes[..., i].unsqueeze(1) for i in range(4))  # each [B, 1, M]
        ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)  # [B, N, M, 4]
        inside_box = ltrb.amin(dim=-1) > 0

        radius = (strides * self.cfg.center_sampling_radius).view(1, -1, 1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        inside_center = ((x - cx).abs() < radius) & ((y - cy).abs() < radius)

        lo, hi = self._size_range(strides)
        reach = ltrb.amax(dim=-1)
        in_range = (reach >= lo.view(1, -1, 1)) & (reach <= hi.view(1, -1, 1))

        candidate = inside_box & inside_center & in_range & (labels.unsqueeze(1) >= 0)
        area = ((x2 - x1) * (y2 - y1)).expand_as(candidate)
        area = torch.where(candidate, area, torch.full_like(area, float("inf")))
        best_area, best = area.min(dim=-1)  # [B, N]
        positive = torch.isfinite(best_area)
        matched_labels = torch.gather(labels, 1, best)
        matched_ltrb = torch.gather(ltrb, 2, best[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
        return positive, torch.where(positive, matched_labels, -1), matched_ltrb

    def _size_range(self, strides: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # FCOS ranges: a level of stride s takes objects whose largest side distance is in [4s, 8s];
        # the first level takes everything smaller, the last everything larger.
        first, last = 2.0 ** self.levels[0], 2.0 ** self.levels[-1]
        lo = torch.where(strides == first, torch.zeros_like(strides), strides * 4)
        hi = torch.where(strides == last, torch.full_like(strides, float("inf")), strides * 8)
        return lo, hi

    def predict(self, raw: Raw, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        boxes, scores = self.decode(raw, image_size)
        return select_detections(boxes, scores, self.cfg)

    def decode(self, raw: Raw, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every location's box, clipped to the image, [B, N, 4] xyxy, and its per-class score [B, N, C]
        (FCOS: sqrt(class probability x centerness), computed in log space), before any threshold or NMS."""
        boxes = clip_boxes_to_image(ltrb_to_boxes(raw["points"], raw["box_ltrb"]), image_size)
        scores = torch.exp(0.5 * (log_sigmoid(raw["cls_logits"]) + log_sigmoid(raw["centerness"]).unsqueeze(-1)))
        return boxes, scores


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, cfg: DetectionConfig) -> dict[str, torch.Tensor]:
    """Decoded candidates (``boxes`` [B, N, 4], ``scores`` [B, N, C]) -> at most ``cfg.max_detections``
    per image: top ``pre_nms_topk`` (location, class) pairs, score threshold, per-class NMS, padded
    outputs ``boxes`` [B, K, 4], ``scores`` [B, K], ``labels`` [B, K] (-1 padding), ``num`` [B]."""
    _, num_points, num_classes = scores.shape
    k = min(cfg.pre_nms_topk, num_points * num_classes)
    top_scores, top_idx = scores.flatten(1).topk(k, dim=1)  # [B, k]
    point_idx = torch.div(top_idx, num_classes, rounding_mode="floor")
    top_labels = top_idx % num_classes
    top_boxes = torch.gather(boxes, 1, point_idx.unsqueeze(-1).expand(-1, -1, 4))  # [B, k, 4]

    keep = multiclass_nms(top_boxes, top_scores, top_labels, num_classes, cfg.nms_thresh, cfg.score_thresh)
    kept_scores = torch.where(keep, top_scores, torch.zeros_like(top_scores))
    out_scores, order = kept_scores.topk(min(cfg.max_detections, k), dim=1)
    found = out_scores > 0
    out_boxes = torch.gather(top_boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4)) * found.unsqueeze(-1)
    out_labels = torch.where(found, torch.gather(top_labels, 1, order), -1)
    return {"boxes": out_boxes, "scores": out_scores, "labels": out_labels, "num": found.sum(dim=1)}


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(x)) from elementary ops, accurate for very negative x in every runtime:
    onnxruntime's Sigmoid flushes results below ~1e-7 to zero, an error a square root magnifies."""
    return x.clamp(max=0) - torch.log1p(torch.exp(-x.abs()))


def ltrb_to_boxes(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """Distances from a point to the four sides -> xyxy boxes."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


def giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - GIoU of paired xyxy boxes, elementwise: torchvision's ``generalized_box_iou_loss`` with
    ``torch.where`` in place of its boolean-mask indexing, which costs a host sync on every call."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    inter_w, inter_h = torch.min(x2, x2g) - torch.max(x1, x1g), torch.min(y2, y2g) - torch.max(y1, y1g)
    inter = torch.where((inter_w > 0) & (inter_h > 0), inter_w * inter_h, 0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    hull = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (inter / (union + eps) - (hull - union) / (hull + eps))


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """FCOS centerness: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    lr, tb = ltrb[..., 0::2], ltrb[..., 1::2]
    ratio = (lr.amin(-1) / lr.amax(-1).clamp(min=1e-6)) * (tb.amin(-1) / tb.amax(-1).clamp(min=1e-6))
    return ratio.clamp(min=0).sqrt()
