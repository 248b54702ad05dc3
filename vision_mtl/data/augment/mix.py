"""Mosaic and mixup of a :class:`Batch` on its device, partners drawn from the same batch.

Ours rather than kornia's: ``RandomMosaic`` takes no masks and neither it nor ``RandomMixUpV2`` knows
partial labels. Every random draw comes from the global RNG of the images' device, a fixed number
per call, so a resumed run mixes exactly as the uninterrupted one. Label policy:

- mosaic: the tiles of a sample are itself (top left) and the three images after it in a random cyclic
  order of the batch (four different images when the batch has four); the 2x2 canvas is
  cut to a random window (half to all of its side, holding the centre) resized to the image size.
  Boxes of all four tiles are kept (clipped, dropped below ``min_box_area`` of their area; the batch
  gets 4x the box rows, extra ones padding); detection stays labelled only if all four tiles were
  (an unlabelled tile's objects would teach "background"); a tile without segmentation is ignore
  pixels and segmentation stays labelled if any tile was; classification becomes unlabelled.
- mixup: ``lam * image + (1 - lam) * partner`` with ``lam`` ~ Beta(32, 32) folded to >= 0.5 (YOLOv5's
  ratio; the sample itself dominates); boxes of both (2x the rows), the dominant image's mask and
  classification label (hard label, not soft); every task's ``valid`` is the AND of the two parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vision_mtl.data.augment.boxes import box_corners, clip_quads
from vision_mtl.data.sample import IGNORE_INDEX

Targets = dict[str, dict[str, torch.Tensor]]
MIXUP_ALPHA = 32.0


def mosaic(images: torch.Tensor, targets: Targets, p: float, min_box_area: float) -> torch.Tensor:
    """Float images [B, 3, H, W] with probability ``p`` each replaced by a 4-image mosaic; ``targets``
    are updated in place (see the module docstring)."""
    b, _, h, w = images.shape
    device = images.device
    chosen = torch.rand(b, device=device) < p
    order = torch.randperm(b, device=device)  # tiles: a sample and the next three in a random cyclic order
    parts = order[(torch.argsort(order).unsqueeze(1) + torch.arange(4, device=device)) % b]
    side = torch.empty(b, device=device).uniform_(0.5, 1.0)  # window side / canvas side
    corner = torch.rand(b, 2, device=device) * (1 - side).unsqueeze(1)  # window's top-left / canvas side (x, y)
    selected = chosen.nonzero().squeeze(1)
    rows = targets["detection"]["labels"].shape[1] if "detection" in targets else 0
    if not len(selected):
        _pad_rows(targets, 4 * rows)
        return images
    parts, side, corner = parts[selected], side[selected], corner[selected]
    theta = torch.zeros(len(selected), 2, 3, device=device)  # output -> canvas, normalised coordinates
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, :, 2] = 2 * corner + side.unsqueeze(1) - 1
    grid = F.affine_grid(theta, [len(selected), 1, h, w], align_corners=False)
    images = images.clone()
    images[selected] = F.grid_sample(_canvas(images[parts]), grid, mode="bilinear", align_corners=False)
    if "segmentation" in targets:
        seg = targets["segmentation"]
        masks = torch.where(seg["valid"].view(-1, 1, 1), seg["mask"], IGNORE_INDEX).unsqueeze(1).float()
        tiles = F.grid_sample(_canvas(masks[parts]), grid, mode="nearest", align_corners=False)
        seg["mask"] = seg["mask"].clone()
        seg["mask"][selected] = tiles.squeeze(1).round().long()
        seg["valid"] = _set(seg["valid"], selected, seg["valid"][parts].any(1))
    if "detection" in targets:
        det = targets["detection"]
        tile = torch.arange(4, device=device)
        shift = torch.stack([tile % 2 * w, tile // 2 * h] * 2, 1).view(1, 4, 1, 4).float()  # tile offset, xyxy
        scale = 2 * images.new_tensor([w, h, w, h])
        boxes = (det["boxes"][parts] + shift) / scale  # [S, 4 tiles, M, 4] as canvas fractions
        boxes = (boxes - corner.repeat(1, 2).view(-1, 1, 1, 4)) / side.view(-1, 1, 1, 1) * (scale / 2)
        labels = torch.where(det["valid"][parts].unsqueeze(-1), det["labels"][parts], -1).flatten(1)
        boxes, kept = clip_quads(box_corners(boxes.flatten(1, 2)), (h, w))
        keep = (labels >= 0) & (kept > 0) & (kept >= min_box_area)
        _pad_rows(targets, 4 * rows)
        det["boxes"][selected] = torch.where(keep.unsqueeze(-1), boxes, 0.0)
        det["labels"][selected] = torch.where(keep, labels, -1)
        det["valid"] = _set(det["valid"], selected, det["valid"][parts].all(1))
    if "classification" in targets:
        cls = targets["classification"]
        cls["valid"] = _set(cls["valid"], selected, torch.zeros_like(selected, dtype=torch.bool))
        cls["labels"] = cls["labels"].clone()
        cls["labels"][selected] = 0 if cls["labels"].is_floating_point() else -1  # multi-hot or class index
    return images


def mixup(images: torch.Tensor, targets: Targets, p: float) -> torch.Tensor:
    """Float images [B, 3, H, W] with probability ``p`` each blended with a partner from the batch;
    ``targets`` are updated in place (see the module docstring)."""
    b, device = images.shape[0], images.device
    partner = torch.randperm(b, device=device)
    chosen = (torch.rand(b, device=device) < p) & (partner != torch.arange(b, device=device))
    alpha = torch.full((b,), MIXUP_ALPHA, device=device)
    lam = torch.distributions.Beta(alpha, alpha).sample()
    lam = torch.where(chosen, torch.maximum(lam, 1 - lam), 1.0).view(-1, 1, 1, 1)
    images = lam * images + (1 - lam) * images[partner]
    for task, target in targets.items():
        target["valid"] = target["valid"] & (target["valid"][partner] | ~chosen)
        if task == "detection":
            other = chosen.unsqueeze(-1)
            boxes = torch.where(other.unsqueeze(-1), target["boxes"][partner], 0.0)
            target["boxes"] = torch.cat([target["boxes"], boxes], 1)
            target["labels"] = torch.cat([target["labels"], torch.where(other, target["labels"][partner], -1)], 1)
    return images


def _canvas(tiles: torch.Tensor) -> torch.Tensor:
    """[S, 4, C, H, W] -> the 2x2 mosaic [S, C, 2H, 2W], tiles row by row."""
    return torch.cat([torch.cat([tiles[:, 0], tiles[:, 1]], -1), torch.cat([tiles[:, 2], tiles[:, 3]], -1)], -2)


def _set(values: torch.Tensor, index: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    out = values.clone()
    out[index] = new
    return out


def _pad_rows(targets: Targets, rows: int) -> None:
    """Grow detection targets to ``rows`` box rows with padding (label -1, zero box)."""
    if "detection" in targets:
        det = targets["detection"]
        extra = rows - det["labels"].shape[1]
        det["boxes"] = F.pad(det["boxes"], (0, 0, 0, extra))
        det["labels"] = F.pad(det["labels"], (0, extra), value=-1)
