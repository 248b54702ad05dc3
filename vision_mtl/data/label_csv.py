"""Image-level labels from a CSV: ``file,label`` rows, several labels joined by ';' for multi-label."""

from __future__ import annotations

import csv
from pathlib import Path

from vision_mtl.errors import DataError


def read_label_csv(path: str | Path) -> dict[str, list[str]]:
    """Map each file name (as written in the CSV) to its label names."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label CSV '{path}' not found; check data.<split>.labels and data.root")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"file", "label"} <= set(reader.fieldnames):
            raise DataError(f"label CSV '{path}' needs a header with 'file' and 'label' columns")
        return {row["file"]: [name for name in row["label"].split(";") if name] for row in reader}
