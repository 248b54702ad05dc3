"""Image-level labels from a CSV: one row per image, several labels joined by ';' for multi-label.

An image in several rows that give different labels is unlabelled and reported (which row is right
cannot be known); rows that repeat the same labels (in any order) are harmless and taken once.

The header names the columns. Without ``file_column``/``label_column`` on the source, the file
column is the first of ``file, filename, file_name, image, image_id, path, img`` present and the
label column the first of ``label, class, category, target`` (names compared case-insensitively).
"""

from __future__ import annotations

import csv
from pathlib import Path

from vision_mtl.config import SourceConfig
from vision_mtl.data import problems as kinds
from vision_mtl.data.problems import ProblemLog
from vision_mtl.data.readers.context import ReadContext
from vision_mtl.data.records import Record, SourceIndex
from vision_mtl.errors import DataError

FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_id", "path", "img")
LABEL_COLUMNS = ("label", "class", "category", "target")


def read_label_csv(path: str | Path, problems: ProblemLog, file_column: str | None = None,
                   label_column: str | None = None) -> dict[str, list[str] | None]:
    """Map each file name (as written in the CSV) to its label names, or to None when its rows
    disagree (reported in ``problems``); columns named as given, or found among the common names."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label CSV '{path}' not found; check the source's 'labels' and data.root")
    labels: dict[str, list[str] | None] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheets start the file with a BOM
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        file_key = _column(path, header, file_column, "file_column", FILE_COLUMNS)
        label_key = _column(path, header, label_column, "label_column", LABEL_COLUMNS)
        for row in reader:
            name = row[file_key] or ""
            names = [label.strip() for label in (row[label_key] or "").split(";") if label.strip()]
            if name not in labels:
                labels[name] = names
            elif labels[name] is not None and set(labels[name]) != set(names):
                problems.add(f"{path} ({name})", kinds.CONFLICTING_ROWS)
                labels[name] = None
    return labels


def _column(path: Path, header: list[str], given: str | None, key: str, common: tuple[str, ...]) -> str:
    """The header entry named ``given`` (exactly), else the first of ``common`` present (in any case)."""
    if given is not None:
        if given not in header:
            raise DataError(f"label CSV '{path}' has no column '{given}' (the source's {key}); its header: "
                            f"{','.join(header)}")
        return given
    by_name = {name.strip().lower(): name for name in header}
    found = next((by_name[name] for name in common if name in by_name), None)
    if found is None:
        raise DataError(f"label CSV '{path}' has no {key.split('_')[0]} column in its header ({','.join(header)}); "
                        f"name it one of {', '.join(common)}, or set the source's {key}")
    return found


def source_labels(cfg: SourceConfig, ctx: ReadContext) -> dict[str, list[str] | None] | None:
    """The labels CSV of a source (its ``labels`` key, read with its column names), or None without one."""
    if not cfg.labels:
        return None
    return read_label_csv(ctx.file(cfg.labels, "labels"), ctx.problems, cfg.file_column, cfg.label_column)


def read(cfg: SourceConfig, ctx: ReadContext) -> SourceIndex:
    """Format ``csv``: the images the CSV lists (relative to ``images``), with their labels."""
    images_dir = ctx.folder(cfg.images, "images")
    records = []
    for name, labels in source_labels(cfg, ctx).items():
        path = images_dir / name
        if not path.is_file():
            ctx.problems.add(path, kinds.MISSING_IMAGE)
            continue
        records.append(Record(path, name, len(records) + 1, classes=labels))
    observed = sorted({n for r in records for n in r.classes or ()})
    return SourceIndex(ctx.name, records, {"classification"}, {"classification": cfg.classes or observed},
                       declared={"classification"} if cfg.classes else set())
