"""Conversion of boxes and polygons between COCO, YOLO and Pascal VOC, read and checked by the same
readers training uses.

Each format is read into :class:`Labels` (images with their instances) and written from it, so any
pair converts. COCO -> YOLO writes ``images/<split>/``, ``labels/<split>/*.txt`` and ``data.yaml``
(with the COCO category ids under ``coco_category_ids``, so the way back, and evaluation on the YOLO
copy, keep them). Objects with polygons become YOLO-seg lines (an object made of several polygons is
joined into one by zero-width bridges, as ultralytics does), others box lines. YOLO cannot hold
crowd regions: they are left out and counted. VOC is written as ``JPEGImages/``, ``Annotations/*.xml``
(boxes only, on VOC's 1-based integer pixel grid; crowd regions as ``difficult`` objects) and
``ImageSets/Main/<split>.txt``; read back, ``difficult`` objects are crowd (``iscrowd: 1`` in COCO).
COCO output is one instances JSON per split.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vision_mtl.data.readers.coco import CocoFile, coco_dict
from vision_mtl.data.image_io import image_size, list_images
from vision_mtl.data.problems import OUTSIDE_FOLDER, UNREADABLE_IMAGE, ProblemLog
from vision_mtl.data.records import Instances
from vision_mtl.data.readers.context import image_ids
from vision_mtl.data.readers.lists import read_word_lines
from vision_mtl.data.readers.voc import read_voc
from vision_mtl.data.readers.yolo import DataYaml, label_path, parse_labels
from vision_mtl.errors import DataError


@dataclass
class Entry:
    """One image to write: its id, name relative to the images folder, (h, w), objects and file."""

    image_id: int
    key: str
    size: tuple[int, int]
    instances: Instances | None  # None: unlabelled (e.g. its COCO id is shared), written without labels
    path: Path


@dataclass
class Labels:
    """A split read from any format; ``problems`` are those of its files, ``counts`` what was left out."""

    entries: list[Entry]
    class_names: list[str]
    category_ids: list[int]
    source: str  # what the problems are reported against
    kind: str  # COCO, YOLO, VOC: named in the counts of problems
    problems: ProblemLog = field(default_factory=ProblemLog)
    counts: Counter = field(default_factory=Counter)

    def report(self, counts: Counter) -> Counter:
        """``counts`` with what reading left out and the problems of the source files (also logged)."""
        self.problems.emit(self.source)
        counts.update(self.counts)
        counts.update({f"{kind} (in the {self.kind} files)": n for kind, n in self.problems.counts().items()})
        return counts


def read_coco(annotations: str | Path, images: str | Path) -> Labels:
    """A COCO instances JSON with its images folder; images missing from the folder are left out."""
    problems = ProblemLog()
    coco = CocoFile(annotations, problems)
    labels = Labels([], coco.class_names, coco.category_ids, str(annotations), "COCO", problems)
    for img, instances in zip(coco.images, coco.instances):
        path = Path(images) / img["file_name"]
        if not path.is_file():
            labels.counts["images missing (skipped)"] += 1
            continue
        labels.entries.append(Entry(img["id"], img["file_name"], (img["height"], img["width"]), instances, path))
    return labels


def read_yolo(data_yaml: str | Path, split: str) -> Labels:
    """The ``split`` of a YOLO dataset; images without a label file are unlabelled, so left out (counted)."""
    spec = DataYaml(data_yaml)
    class_index = {k: i for i, k in enumerate(spec.class_ids)}
    labels = Labels([], spec.names, spec.category_ids, str(data_yaml), "YOLO")
    for image_id, (path, key) in enumerate(spec.images(split), start=1):
        if not label_path(path).is_file():
            labels.counts["images without a label file (left out)"] += 1
            continue
        try:
            size = image_size(path)
        except DataError:
            labels.problems.add(path, UNREADABLE_IMAGE)
            continue
        instances, _ = parse_labels(label_path(path), size, class_index, labels.problems)
        labels.entries.append(Entry(image_id, key, size, instances, path))
    return labels


def read_voc_folder(images: str | Path, annotations: str | Path, split_file: str | Path | None = None) -> Labels:
    """VOC images with their XML folder (only the ids of ``split_file`` when given); images without an
    XML, or with an unreadable one, are left out (counted). Classes: the object names, sorted; ids 1..N."""
    images, annotations = Path(images), Path(annotations)
    for folder in (images, annotations):
        if not folder.is_dir():
            raise DataError(f"VOC folder '{folder}' not found")
    paths = list_images(images)
    if split_file is not None:
        listed = {words[0] for words in read_word_lines(Path(split_file))}
        paths = [p for p in paths if not listed.isdisjoint(image_ids(p.relative_to(images).as_posix()))]
    problems = ProblemLog()
    records, names = read_voc(images, paths, annotations, problems)
    labels = Labels([], names, list(range(1, len(names) + 1)), str(annotations), "VOC", problems)
    for image_id, record in enumerate(records, start=1):
        if record.instances is None:
            labels.counts["images without a readable XML (left out)"] += 1
            continue
        labels.entries.append(Entry(image_id, record.key, record.size, record.instances, record.path))
    return labels


def write_coco(labels: Labels, out: str | Path) -> Counter:
    """One COCO instances JSON at ``out``: ``file_name`` relative to the images folder, areas from the
    polygons. COCO lists every image as labelled, so unlabelled ones are left out (counted)."""
    labelled = [e for e in labels.entries if e.instances is not None]
    coco = coco_dict(((e.image_id, e.key, e.size, e.instances) for e in labelled), labels.class_names,
                     labels.category_ids, with_segments=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(coco))
    counts = Counter(images=len(coco["images"]), objects=len(coco["annotations"]))
    if len(labelled) < len(labels.entries):
        counts["unlabelled images (left out)"] = len(labels.entries) - len(labelled)
    return labels.report(counts)


def write_yolo(labels: Labels, out: str | Path, split: str = "train", link: bool = False) -> Counter:
    """The split as YOLO under ``out`` (adding ``split`` to an existing data.yaml there); images
    copied, or symlinked with ``link``."""
    out = Path(out)
    spec_path = out / "data.yaml"
    spec = yaml.safe_load(spec_path.read_text()) if spec_path.is_file() else {"path": "."}
    if spec.get("names", labels.class_names) != labels.class_names:
        raise DataError(f"'{spec_path}' already holds other class names; write each dataset to its own folder")
    counts = Counter()
    for entry in labels.entries:
        target = _place(entry, out / "images" / split, link, labels.problems)
        if target is None:
            continue
        label_file = label_path(target)
        if entry.instances is None:  # unlabelled: no label file, nor one from an earlier run
            label_file.unlink(missing_ok=True)
        else:
            lines = _yolo_lines(entry.instances, *entry.size, counts)
            label_file.parent.mkdir(parents=True, exist_ok=True)
            label_file.write_text("".join(line + "\n" for line in lines))
        counts["images"] += 1
    spec.update({split: f"images/{split}", "names": labels.class_names})
    if labels.category_ids != list(range(1, len(labels.class_names) + 1)):
        spec["coco_category_ids"] = labels.category_ids
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return labels.report(counts)


def write_voc(labels: Labels, out: str | Path, split: str = "train", link: bool = False) -> Counter:
    """The split as Pascal VOC under ``out``: ``JPEGImages/<key>`` (copied, or symlinked with
    ``link``), ``Annotations/<key stem>.xml`` and the ids added to ``ImageSets/Main/<split>.txt``.
    Boxes are rounded to VOC's integer 1-based pixels; segments are not kept (counted)."""
    out = Path(out)
    counts, ids = Counter(), []
    for entry in labels.entries:
        target = _place(entry, out / "JPEGImages", link, labels.problems)
        if target is None:
            continue
        xml = out / "Annotations" / Path(entry.key).with_suffix(".xml")
        if entry.instances is None:  # unlabelled: no XML, nor one from an earlier run
            xml.unlink(missing_ok=True)
        else:
            xml.parent.mkdir(parents=True, exist_ok=True)
            ET.ElementTree(_voc_xml(entry, labels.class_names, counts)).write(xml, encoding="utf-8")
        ids.append(image_ids(entry.key)[0])
        counts["images"] += 1
    listing = out / "ImageSets" / "Main" / f"{split}.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    known = [words[0] for words in read_word_lines(listing)] if listing.is_file() else []
    listing.write_text("".join(f"{i}\n" for i in sorted({*known, *ids})))
    return labels.report(counts)


def _voc_xml(entry: Entry, class_names: list[str], counts: Counter) -> ET.Element:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = Path(entry.key).name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", entry.size[1]), ("height", entry.size[0]), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    objects = entry.instances
    for box, label, crowd, segment in zip(objects.boxes.tolist(), objects.labels.tolist(), objects.crowd, objects.segments):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[label]
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(crowd))
        x1, y1 = round(box[0]) + 1, round(box[1]) + 1  # VOC: 1-based, xmax/ymax the last pixel inside
        x2, y2 = max(round(box[2]), x1), max(round(box[3]), y1)
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2, y2)):
            ET.SubElement(bndbox, tag).text = str(value)
        counts["objects"] += 1
        if segment is not None:
            counts["segments (left out: VOC XML holds boxes)"] += 1
    return root


def _place(entry: Entry, folder: Path, link: bool, problems: ProblemLog) -> Path | None:
    """Copy (or symlink) the entry's image to ``folder / key``; None when the key leads outside ``folder``."""
    target = _inside(folder, entry.key)
    if target is None:
        problems.add(entry.key, OUTSIDE_FOLDER)
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        target.unlink(missing_ok=True)
        os.symlink(entry.path.resolve(), target)
    else:
        shutil.copy2(entry.path, target)
    return target


def _inside(folder: Path, file_name: str) -> Path | None:
    """``folder / file_name`` when it stays inside ``folder`` (symlinked folders followed; the file
    itself may be a link from an earlier ``--link`` run), else None: '../x.jpg' or '/x.jpg'
    would write or unlink a file elsewhere."""
    target = folder / file_name
    if target.name in ("", ".", ".."):
        return None
    return target if target.parent.resolve().is_relative_to(folder.resolve()) else None


def _yolo_lines(instances: Instances, height: int, width: int, counts: Counter) -> list[str]:
    scale = np.array([width, height], np.float64)
    lines = []
    for i, (box, label) in enumerate(zip(instances.boxes, instances.labels)):
        segment = instances.segments[i]
        if instances.crowd[i]:
            counts["crowd regions (left out)"] += 1
        elif isinstance(segment, list):
            points = merge_polygons([np.asarray(p, np.float64).reshape(-1, 2) for p in segment]) / scale
            lines.append(f"{label} " + " ".join(f"{v:.6f}" for v in points.clip(0, 1).reshape(-1)))
            counts["polygons"] += 1
        else:
            x1, y1, x2, y2 = box
            values = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
            lines.append(f"{label} " + " ".join(f"{v:.6f}" for v in values))
            counts["boxes (no polygon)" if segment is None else "RLE objects written as boxes"] += 1
    return lines


def merge_polygons(parts: list[np.ndarray]) -> np.ndarray:
    """One [K, 2] polygon tracing several: each further part hangs off the nearest point of what is
    joined so far by a bridge walked out and back, which encloses no area."""
    merged = parts[0]
    for part in parts[1:]:
        distance = ((merged[:, None] - part[None]) ** 2).sum(-1)
        i, j = np.unravel_index(int(distance.argmin()), distance.shape)
        part = np.roll(part, -j, axis=0)
        merged = np.concatenate([merged[: i + 1], part, part[:1], merged[i:]])
    return merged


def coco_to_yolo(annotations: str | Path, images: str | Path, out: str | Path, split: str = "train",
                 link: bool = False) -> Counter:
    """Write a COCO split as YOLO under ``out``; counts of what was written and left out."""
    return write_yolo(read_coco(annotations, images), out, split, link)


def yolo_to_coco(data_yaml: str | Path, split: str, out: str | Path) -> Counter:
    """Write the ``split`` of a YOLO dataset as a COCO instances JSON at ``out`` (image ids 1.. in sorted
    order; category ids: data.yaml's ``coco_category_ids``, else class id + 1)."""
    return write_coco(read_yolo(data_yaml, split), out)
