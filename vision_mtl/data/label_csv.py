"""Image-level labels from a CSV: ``file,label`` rows, several labels joined by ';' for multi-label."""

from __future__ import annotations

import csv
from pathlib import Path

from vision_mtl.config import SourceConfig
from vision_mtl.data import problems as kinds
from vision_mtl.data.reading import ReadContext
from vision_mtl.data.records import Record, SourceIndex
from vision_mtl.errors import DataError


def read_label_csv(path: str | Path) -> dict[str, list[str]]:
    """Map each file name (as written in the CSV) to its label names."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label CSV '{path}' not found; check the source's 'labels' and data.root")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"file", "label"} <= set(reader.fieldnames):
            raise DataError(f"label CSV '{path}' needs a header with 'file' and 'label' columns")
        return {row["file"]: [name.strip() for name in (row["label"] or "").split(";") if name.strip()]
                for row in reader}


def read(cfg: SourceConfig, ctx: ReadContext) -> SourceIndex:
    """Format ``csv``: the images the CSV lists (relative to ``images``), with their labels."""
    images_dir = ctx.folder(cfg.images, "images")
    records = []
    for name, labels in read_label_csv(ctx.file(cfg.labels, "labels")).items():
        path = images_dir / name
        if not path.is_file():
            ctx.problems.add(path, kinds.MISSING_IMAGE)
            continue
        records.append(Record(path, name, len(records) + 1, classes=labels))
    observed = sorted({n for r in records for n in r.classes})
    return SourceIndex(ctx.name, records, {"classification"}, {"classification": cfg.classes or observed},
                       declared={"classification"} if cfg.classes else set())
