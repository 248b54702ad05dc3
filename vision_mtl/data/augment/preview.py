"""A picture of what training sees: augmented training samples with their boxes and mask outlines,
for checking by eye that the labels still sit on the objects."""

from __future__ import annotations

from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from vision_mtl.config import Config
from vision_mtl.data.augment.device import DeviceAugment
from vision_mtl.data.augment.decode import decode_pending
from vision_mtl.data.loader import build_data
from vision_mtl.data.sample import IGNORE_INDEX, Batch
from vision_mtl.utils.colors import palette
from vision_mtl.utils.runtime import resolve_device

IGNORE_COLOUR = (64, 64, 64)


def augment_preview(cfg: Config, batches: int = 1) -> np.ndarray:
    """HxWx3 uint8 grid of ``batches`` augmented training batches (``cfg.train.augment``, seed
    ``cfg.train.seed``): boxes with class names, mask outlines per class, ignore pixels greyed."""
    torch.manual_seed(cfg.train.seed)
    data = build_data(cfg)
    device = resolve_device(cfg.train.device)
    augment = DeviceAugment(cfg.train.augment, device)
    tiles = [tile for batch in islice(data.train, batches)
             for tile in _draw(augment(decode_pending(batch.to(device))), data.classes)]
    grid = make_grid(torch.stack(tiles), nrow=min(8, len(tiles)), padding=2, pad_value=255)
    return grid.permute(1, 2, 0).numpy()


def _draw(batch: Batch, classes: dict[str, list[str]]) -> list[torch.Tensor]:
    images = (batch.images * 255).round().to(torch.uint8).cpu()
    det, seg = batch.targets.get("detection"), batch.targets.get("segmentation")
    tiles = []
    for b, image in enumerate(images):
        if seg is not None and seg["valid"][b]:
            mask = seg["mask"][b].cpu()
            image = draw_segmentation_masks(image, mask == IGNORE_INDEX, alpha=0.6, colors=[IGNORE_COLOUR])
            values = [v for v in mask.unique().tolist() if v not in (0, IGNORE_INDEX)]
            if values:
                outlines = torch.stack([_outline(mask == v) for v in values])
                colours = [tuple(int(c) for c in palette(len(classes["segmentation"]))[v]) for v in values]
                image = draw_segmentation_masks(image, outlines, alpha=1.0, colors=colours)
        if det is not None and det["valid"][b] and (det["labels"][b] >= 0).any():  # torchvision warns on none
            real = det["labels"][b] >= 0
            labels = det["labels"][b][real].tolist()
            colours = [tuple(int(c) for c in palette(len(classes["detection"]))[v]) for v in labels]
            image = draw_bounding_boxes(image, det["boxes"][b][real].cpu(), [classes["detection"][v] for v in labels],
                                        colors=colours)
        tiles.append(image)
    return tiles


def _outline(region: torch.Tensor) -> torch.Tensor:
    """The pixels of ``region`` [H, W] bool that touch a pixel outside it."""
    eroded = -F.max_pool2d(-region[None, None].float(), 3, stride=1, padding=1)[0, 0]
    return region & (eroded < 1)
