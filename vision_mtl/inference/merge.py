"""The merged outputs, built from the progress records of every process in file order: the same
files whether the run was one process or many, uninterrupted or resumed.

- ``detections.json``: COCO results (``image_id``, ``file_name``, original ``category_id``,
  ``bbox`` xywh in original pixels, ``score``); ``images.json`` holds the matching COCO
  ``images`` and ``categories``, so ``COCO("images.json").loadRes("detections.json")`` works.
- ``classification.csv``: ``file`` and the top-k ``label_i``/``score_i`` (multi-class), or
  ``file``, ``predicted`` (classes scoring >= 0.5, ``;``-separated) and every class's score (multi-label).
- ``errors.log``: ``file<TAB>reason`` for each image that could not be read.
"""

from __future__ import annotations

import csv
import json
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from vision_mtl.inference.folder import OutputFolder
from vision_mtl.inference.records import Record, read_record, record_index
from vision_mtl.inference.sources import ImageFile
from vision_mtl.utils.atomic import atomic_open

TOP_K = 5
MULTI_LABEL_THRESHOLD = 0.5


@dataclass(frozen=True)
class OutputSpec:
    """What the model answers: which tasks, with which class names and detection category ids."""

    tasks: list[str]
    classes: dict[str, list[str]]
    category_ids: list[int]
    multi_label: bool


def merge_outputs(folder: OutputFolder, files: list[ImageFile], spec: OutputSpec) -> dict[str, int]:
    """Write the merged files for ``files`` (sorted) from the records; returns the counts:
    images, succeeded, failed, missing (no record yet), detections."""
    index = record_index(folder.records)
    counts = {"images": len(files), "succeeded": 0, "failed": 0, "missing": 0, "detections": 0}
    images: list[dict[str, Any]] = []
    with ExitStack() as stack:
        errors = stack.enter_context(atomic_open(folder.root / "errors.log"))
        detections = stack.enter_context(atomic_open(folder.root / "detections.json")) \
            if "detection" in spec.tasks else None
        rows = csv.writer(stack.enter_context(atomic_open(folder.root / "classification.csv"))) \
            if "classification" in spec.tasks else None
        if rows:
            rows.writerow(_csv_header(spec))
        if detections:
            detections.write("[")
        for file in files:
            if file.relative not in index:
                counts["missing"] += 1
                continue
            record = read_record(*index[file.relative])
            if "error" in record:
                counts["failed"] += 1
                errors.write(f"{file.relative}\t{record['error']}\n")
                continue
            counts["succeeded"] += 1
            image_id = counts["succeeded"]
            images.append({"id": image_id, "file_name": file.relative, "height": record["height"],
                           "width": record["width"]})
            if detections:
                for entry in _coco_entries(record, image_id, spec.category_ids):
                    detections.write(("," if counts["detections"] else "") + "\n" + json.dumps(entry))
                    counts["detections"] += 1
            if rows:
                rows.writerow(_csv_row(record, spec))
        if detections:
            detections.write("\n]\n")
    if "detection" in spec.tasks:
        categories = [{"id": cid, "name": name} for cid, name in zip(spec.category_ids, spec.classes["detection"])]
        with atomic_open(folder.root / "images.json") as f:
            json.dump({"images": images, "categories": categories}, f)
    return counts


def _coco_entries(record: Record, image_id: int, category_ids: list[int]) -> list[dict[str, Any]]:
    return [{"image_id": image_id, "file_name": record["file"], "category_id": category_ids[label],
             "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "score": score}
            for x1, y1, x2, y2, score, label in record["detections"]]


def _csv_header(spec: OutputSpec) -> list[str]:
    names = spec.classes["classification"]
    if spec.multi_label:
        return ["file", "predicted", *names]
    return ["file", *[f"{kind}_{i}" for i in range(1, min(TOP_K, len(names)) + 1) for kind in ("label", "score")]]


def _csv_row(record: Record, spec: OutputSpec) -> list[Any]:
    names, scores = spec.classes["classification"], record["class_scores"]
    if spec.multi_label:
        predicted = ";".join(n for n, s in zip(names, scores) if s >= MULTI_LABEL_THRESHOLD)
        return [record["file"], predicted, *scores]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:TOP_K]
    return [record["file"], *[v for i in order for v in (names[i], scores[i])]]
