"""Semantic masks as a folder of PNGs matched to the images by relative path and stem.

Class-index PNGs (L, I;16) and palette PNGs (P, the palette index is the class) both hold class
values; 255 is ignore. Integer keys of ``class_map`` map file values to class names, merging or
remapping ids; values it does not list become ignore.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vision_mtl.config import SourceConfig
from vision_mtl.data import problems as kinds
from vision_mtl.data.readers.context import ReadContext
from vision_mtl.data.records import Record, SourceIndex
from vision_mtl.data.sample import IGNORE_INDEX
from vision_mtl.errors import DataError


def find_mask(masks_dir: Path, key: str) -> Path | None:
    """``masks_dir/a/b.png`` for image key ``a/b.jpg``, if it exists."""
    candidate = (masks_dir / key).with_suffix(".png")
    return candidate if candidate.is_file() else None


def mask_classes(cfg: SourceConfig, ctx: ReadContext, fallback: list[str] | None = None
                 ) -> tuple[list[str], np.ndarray | None]:
    """The class names of a mask source and, when ``class_map`` maps values, the value -> class table."""
    value_map = {k: v for k, v in (cfg.class_map or {}).items() if isinstance(k, int)}
    if value_map:
        names = list(dict.fromkeys(v for v in value_map.values() if v is not None))
        table = np.full(max(256, max(value_map) + 1), IGNORE_INDEX, np.int64)
        for value, name in value_map.items():
            if name is not None:
                table[value] = names.index(name)
        return names, table
    names = cfg.classes or ctx.seg_classes or fallback
    if not names:
        raise DataError(f"{ctx.name}: segmentation needs class names by mask value; set 'classes' on the source "
                        "(or data.seg_classes), or map values to names with class_map")
    return list(names), None


def read(cfg: SourceConfig, ctx: ReadContext) -> SourceIndex:
    """Format ``masks``: every image under ``images`` with its PNG under ``masks``; a missing PNG is reported."""
    images_dir = ctx.folder(cfg.images, "images")
    masks_dir = ctx.folder(cfg.masks, "masks")
    names, table = mask_classes(cfg, ctx)
    records = []
    for i, path in enumerate(ctx.images(images_dir), start=1):
        key = path.relative_to(images_dir).as_posix()
        mask_file = find_mask(masks_dir, key)
        if mask_file is None:
            ctx.problems.add(path, kinds.MISSING_LABELS)
        records.append(Record(path, key, i, mask_file=mask_file))
    return SourceIndex(ctx.name, records, {"segmentation"}, {"segmentation": names}, declared={"segmentation"},
                       mask_values=table)
