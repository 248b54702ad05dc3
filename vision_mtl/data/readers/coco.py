"""COCO instances JSON: reading it into records (boxes, polygons/RLE, crowd regions) and writing one.

Categories are sorted by id; contiguous class ``i`` is the ``i``-th and ``category_ids[i]`` its
original id, which results are written with. Crowd annotations are kept as crowd instances.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Iterable

from vision_mtl.config import SourceConfig
from vision_mtl.data import problems as kinds
from vision_mtl.data.readers.label_csv import source_labels
from vision_mtl.data.problems import ProblemLog
from vision_mtl.data.readers.context import ReadContext
from vision_mtl.data.records import Instances, Record, Segment, SourceIndex, checked_box
from vision_mtl.errors import DataError, first_line

_REQUIRED = {"images": ("id", "file_name", "height", "width"), "categories": ("id", "name")}


def load_coco_json(path: str | Path) -> dict:
    """The parsed JSON of a COCO instances file, checked for its three lists."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO annotations '{path}' not found; check the source's 'annotations' and data.root")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"COCO annotations '{path}' is not valid JSON: {first_line(exc)}") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"COCO annotations '{path}' has no '{key}' list; is it an instances file?")
    for key, fields in _REQUIRED.items():
        for entry in data[key]:
            missing = [f for f in fields if f not in entry]
            if missing:
                raise DataError(f"COCO annotations '{path}': an entry of '{key}' lacks {missing}; each needs "
                                f"{', '.join(fields)}")
    return data


class CocoFile:
    """A COCO file's categories and, per image entry, its :class:`Instances` (checked and repaired),
    or None for an entry whose id another entry shares: that id's annotations could belong to
    either, so each such image is unlabelled (and reported)."""

    def __init__(self, path: str | Path, problems: ProblemLog):
        self.path = Path(path)
        data = load_coco_json(self.path)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.class_names = [c["name"] for c in categories]
        self.category_ids = [c["id"] for c in categories]
        index_of = {c["id"]: i for i, c in enumerate(categories)}
        per_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if isinstance(image_id, (int, str)) and image_id in per_image:
                per_image[image_id].append(ann)
            else:
                problems.add(self.path, kinds.UNLISTED_IMAGE)
        shared = {image_id for image_id, n in Counter(img["id"] for img in data["images"]).items() if n > 1}
        self.images = data["images"]
        self.instances: list[Instances | None] = []
        for img in self.images:
            where = f"{self.path} ({img['file_name']})"
            if img["id"] in shared:
                problems.add(where, kinds.SHARED_IMAGE_ID)
                self.instances.append(None)
            else:
                self.instances.append(_instances(per_image[img["id"]], img["height"], img["width"], index_of, where,
                                                 problems))


def _instances(anns: list[dict], height: int, width: int, index_of: dict[int, int], where: str,
               problems: ProblemLog) -> Instances:
    boxes, labels, crowd, areas, segments = [], [], [], [], []
    for ann in anns:
        label = index_of.get(ann.get("category_id"))
        box = _xyxy(ann.get("bbox"))
        if label is None:
            problems.add(where, kinds.UNKNOWN_CLASS)
            continue
        if box is None:
            problems.add(where, kinds.MALFORMED_LABEL)
            continue
        clipped = checked_box(box, (height, width), where, problems)
        if clipped is None:
            continue
        segment = _segment(ann.get("segmentation"), where, problems)
        boxes.append(clipped)
        labels.append(label)
        crowd.append(bool(ann.get("iscrowd", 0)))
        areas.append(float(ann.get("area") or (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])))
        segments.append(segment)
    return Instances.build(boxes, labels, crowd, areas, segments)


def _xyxy(bbox: object) -> list[float] | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    return [x, y, x + w, y + h] if all(map(math.isfinite, (x, y, w, h))) else None


def _segment(segmentation: object, where: str, problems: ProblemLog) -> Segment | None:
    """Polygons with fewer than 3 points are dropped; an object left without any is box-only."""
    if isinstance(segmentation, dict):
        return segmentation if {"counts", "size"} <= set(segmentation) else None
    if not isinstance(segmentation, list) or not segmentation:
        return None
    polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
    problems.add(where, kinds.SHORT_POLYGON, len(segmentation) - len(polygons))
    return polygons or None


def read(cfg: SourceConfig, ctx: ReadContext) -> SourceIndex:
    """Format ``coco``: the JSON's images under ``images``; boxes, masks from segments, and image-level
    classes from the categories present (multi-label), a ``labels`` CSV or an image ``label_field``."""
    images_dir = ctx.folder(cfg.images, "images")
    coco = CocoFile(ctx.file(cfg.annotations, "annotations"), ctx.problems)
    label_csv = source_labels(cfg, ctx)
    presence = label_csv is None and not cfg.label_field
    records = []
    for img, instances in zip(coco.images, coco.instances):
        path = images_dir / img["file_name"]
        if not ctx.wanted(img["file_name"]):
            continue
        if not path.is_file():
            ctx.problems.add(path, kinds.MISSING_IMAGE)
            continue
        if presence:
            names = None if instances is None else [coco.class_names[i] for i in sorted(set(instances.labels.tolist()))]
        elif label_csv is not None:
            names = label_csv.get(img["file_name"])
        else:
            names = _field_labels(img.get(cfg.label_field))
        records.append(Record(path, img["file_name"], img["id"], (img["height"], img["width"]), instances,
                              classes=names))
    provides = {"detection", "segmentation"}
    if not presence or ctx.multi_label:  # the categories present are a multi-label target only
        provides.add("classification")
    cls_names = coco.class_names if presence else sorted({n for r in records for n in r.classes or ()})
    return SourceIndex(
        ctx.name, records, provides,
        classes={"detection": coco.class_names, "segmentation": ["background", *coco.class_names],
                 "classification": cls_names},
        declared={"detection", "segmentation", *(["classification"] if presence else [])},
        category_ids=coco.category_ids, seg_from_instances=True)


def _field_labels(value: object) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def coco_dict(entries: Iterable[tuple[int, str, tuple[int, int], Instances]], class_names: list[str],
              category_ids: list[int], with_segments: bool = False) -> dict:
    """A COCO instances dict from ``(image id, file name, (h, w), instances)`` with contiguous labels.

    Objects labelled ``-1`` are left out; crowd objects are written with ``iscrowd: 1``.
    """
    images, annotations = [], []
    for image_id, file_name, (height, width), instances in entries:
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for i, (box, label) in enumerate(zip(instances.boxes.tolist(), instances.labels.tolist())):
            if label < 0:
                continue
            x1, y1, x2, y2 = box
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[label],
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(instances.areas[i]),
                   "iscrowd": int(instances.crowd[i])}
            if with_segments and instances.segments[i] is not None:
                ann["segmentation"] = instances.segments[i]
            annotations.append(ann)
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}
