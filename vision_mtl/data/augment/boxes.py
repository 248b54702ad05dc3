"""Box bookkeeping for device augmentation that kornia lacks: the box of a moved box's quadrilateral
clipped to the image (not the clipped box of its corners, which is loose for a rotated box cut by the
border), and the fraction of its area a box keeps."""

from __future__ import annotations

import torch

_TOLERANCE = 1e-4


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """xyxy boxes [..., 4] -> their corners [..., 4, 2], clockwise from the top left."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([torch.stack([x1, y1], -1), torch.stack([x2, y1], -1),
                        torch.stack([x2, y2], -1), torch.stack([x1, y2], -1)], dim=-2)


def clip_quads(quads: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes [B, M, 4] of the convex quadrilaterals [B, M, 4, 2] clipped to the ``size`` = (H, W) image,
    and the fraction [B, M] of each unclipped box's area they keep (0 for nothing or a degenerate box)."""
    height, width = size
    full = torch.cat([quads.amin(dim=-2), quads.amax(dim=-2)], dim=-1)
    points, valid = _clipped_polygon_points(quads, width, height)
    inf = torch.full_like(points, float("inf"))
    low = torch.where(valid.unsqueeze(-1), points, inf).amin(dim=-2)
    high = torch.where(valid.unsqueeze(-1), points, -inf).amax(dim=-2)
    limits = quads.new_tensor([width, height])
    clipped = torch.cat([low.clamp(min=0), torch.minimum(high, limits)], dim=-1)
    full_area = _area(full)
    kept = torch.where(valid.any(-1) & (full_area > 0), _area(clipped) / full_area.clamp(min=1e-12), 0.0)
    return torch.where(kept.unsqueeze(-1) > 0, clipped, 0.0), kept


def _clipped_polygon_points(quads: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points whose bounding box is that of quad ∩ image: the quad's corners inside the image, its
    edges' crossings of the image border, and the image corners inside the quad; [B, M, 24, 2] + valid."""
    limits = quads.new_tensor([width, height])
    start, end = quads, quads.roll(-1, dims=-2)
    crossings, crossing_ok = [], []
    for axis in (0, 1):
        for line in (0.0, float(limits[axis])):
            span = end[..., axis] - start[..., axis]
            t = (line - start[..., axis]) / torch.where(span == 0, torch.ones_like(span), span)
            point = start + t.unsqueeze(-1) * (end - start)
            point[..., axis] = line
            crossings.append(point)
            crossing_ok.append((span != 0) & (t >= 0) & (t <= 1) & _inside(point, limits))
    corners = box_corners(quads.new_tensor([0.0, 0.0, width, height])).expand(*quads.shape[:-2], 4, 2)
    points = torch.cat([quads, *crossings, corners], dim=-2)
    valid = torch.cat([_inside(quads, limits), *crossing_ok, _in_convex(corners, quads)], dim=-1)
    return points, valid


def _inside(points: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    return ((points >= -_TOLERANCE) & (points <= limits + _TOLERANCE)).all(-1)


def _in_convex(points: torch.Tensor, quads: torch.Tensor) -> torch.Tensor:
    """Whether each of ``points`` [..., P, 2] lies in its convex quad [..., 4, 2] (either winding)."""
    edge = (quads.roll(-1, dims=-2) - quads).unsqueeze(-3)  # [..., 1, 4, 2]
    rel = points.unsqueeze(-2) - quads.unsqueeze(-3)  # [..., P, 4, 2]
    cross = edge[..., 0] * rel[..., 1] - edge[..., 1] * rel[..., 0]
    return (cross >= -_TOLERANCE).all(-1) | (cross <= _TOLERANCE).all(-1)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
