"""Pascal VOC: an images folder, a folder of XML files (one per image, matched by relative path and
stem) and optionally a folder of class-index or palette mask PNGs (``SegmentationClass``).

Boxes: VOC numbers pixels from 1 and its ``xmax``/``ymax`` are the last pixel inside, so the box in
continuous 0-based pixel coordinates is ``[xmin - 1, ymin - 1, xmax, ymax]`` (as detectron2 reads
VOC; written back the same way). ``difficult`` objects become crowd instances: no detection target,
and ignored by COCOeval (a detection matching one counts neither way), as VOC's own evaluation
ignores them. ``truncated`` objects are ordinary boxes. XML comes from strangers: it is parsed with
defusedxml, so entity expansion and external entities are refused (the file is reported, skipped).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from vision_mtl.config import SourceConfig
from vision_mtl.data import problems as kinds
from vision_mtl.data.image_io import image_size
from vision_mtl.data.problems import ProblemLog
from vision_mtl.data.readers.context import ReadContext
from vision_mtl.data.readers.masks import find_mask, mask_classes
from vision_mtl.data.records import Instances, Record, SourceIndex, checked_box
from vision_mtl.errors import DataError


@dataclasses.dataclass
class VocObject:
    name: str
    box: list[float]  # xyxy, 0-based continuous pixels
    difficult: bool


def parse_voc_xml(path: Path, problems: ProblemLog) -> tuple[tuple[int, int] | None, list[VocObject]] | None:
    """``((h, w) or None when the file gives none, objects)`` of one annotation file; None when it
    cannot be read (reported). An object without a name or a numeric box is dropped (reported)."""
    try:
        root = SafeET.parse(path).getroot()
    except (ParseError, DefusedXmlException, OSError, UnicodeDecodeError, ValueError):
        problems.add(path, kinds.UNREADABLE_LABELS)
        return None
    if root.tag != "annotation":
        problems.add(path, kinds.UNREADABLE_LABELS)
        return None
    width, height = _number(root, "size/width"), _number(root, "size/height")
    size = (int(height), int(width)) if width and height else None
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = [_number(obj, f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
        if not name or None in box:
            problems.add(path, kinds.MALFORMED_LABEL)
            continue
        x1, y1, x2, y2 = box
        objects.append(VocObject(name, [x1 - 1, y1 - 1, x2, y2], bool(_number(obj, "difficult"))))
    return size, objects


def _number(node: Element, tag: str) -> float | None:
    try:
        value = float((node.findtext(tag) or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def voc_instances(objects: list[VocObject], size: tuple[int, int], class_index: dict[str, int], where: Path,
                  problems: ProblemLog) -> Instances:
    """The objects as instances of the classes in ``class_index`` (others: unknown class, dropped)."""
    boxes, labels, crowd, areas = [], [], [], []
    for obj in objects:
        if obj.name not in class_index:
            problems.add(where, kinds.UNKNOWN_CLASS)
            continue
        box = checked_box(obj.box, size, where, problems)
        if box is None:
            continue
        boxes.append(box)
        labels.append(class_index[obj.name])
        crowd.append(obj.difficult)
        areas.append((box[2] - box[0]) * (box[3] - box[1]))
    return Instances.build(boxes, labels, crowd, areas, [None] * len(boxes))


def read_voc(images_dir: Path, paths: list[Path], xml_dir: Path | None, problems: ProblemLog,
             classes: list[str] | None = None) -> tuple[list[Record], list[str]]:
    """The images ``paths`` (under ``images_dir``) with the boxes of their XML files, and the detection
    classes (``classes``, else the object names found, sorted). Images without an XML are unlabelled
    for detection (counted in one line against the folder); unreadable XMLs are reported, skipped."""
    parsed: dict[int, tuple[tuple[int, int] | None, list[VocObject]]] = {}
    missing = 0
    for i, path in enumerate(paths if xml_dir is not None else ()):
        xml = (xml_dir / path.relative_to(images_dir)).with_suffix(".xml")
        if not xml.is_file():
            missing += 1
            continue
        result = parse_voc_xml(xml, problems)
        if result is not None:
            parsed[i] = result
    if missing:
        problems.add(xml_dir, kinds.MISSING_LABELS, missing)
    names = list(classes) if classes else sorted({o.name for _, objects in parsed.values() for o in objects})
    class_index = {name: i for i, name in enumerate(names)}
    records = []
    for i, path in enumerate(paths):
        key = path.relative_to(images_dir).as_posix()
        record = Record(path, key, i + 1)
        if i in parsed:
            size, objects = parsed[i]
            where = (xml_dir / key).with_suffix(".xml")
            try:
                record.size = size or image_size(path)
            except DataError:
                problems.add(path, kinds.UNREADABLE_IMAGE)
                continue
            record.instances = voc_instances(objects, record.size, class_index, where, problems)
        records.append(record)
    return records, names


def read(cfg: SourceConfig, ctx: ReadContext) -> SourceIndex:
    """Format ``voc``: boxes from the optional ``annotations`` (XML), masks from the optional ``masks``
    folder (without annotations the source labels no detection: a test split without boxes, say)."""
    images_dir = ctx.folder(cfg.images, "images")
    xml_dir = ctx.folder(cfg.annotations, "annotations") if cfg.annotations else None
    masks_dir = ctx.folder(cfg.masks, "masks") if cfg.masks else None
    records, names = read_voc(images_dir, ctx.images(images_dir), xml_dir, ctx.problems, cfg.classes)
    if not records:
        raise DataError(f"{ctx.name}: no images found in '{images_dir}'" +
                        (f" among the ids of split_file '{cfg.split_file}'" if cfg.split_file else ""))
    provides, classes, table = ({"detection"} if xml_dir else set()), {"detection": names}, None
    if masks_dir is not None:
        provides.add("segmentation")
        for record in records:
            record.mask_file = find_mask(masks_dir, record.key)
            if record.mask_file is None:
                ctx.problems.add(record.path, kinds.MISSING_LABELS)
        if "segmentation" in ctx.tasks:
            # `classes` are the detection classes here; as VOC's palette masks number them, value i + 1
            classes["segmentation"], table = mask_classes(dataclasses.replace(cfg, classes=None), ctx,
                                                          ["background", *cfg.classes] if cfg.classes else None)
    declared = ({"detection"} if cfg.classes else set()) | ({"segmentation"} & provides)
    return SourceIndex(ctx.name, records, provides, classes, declared=declared, mask_values=table)
