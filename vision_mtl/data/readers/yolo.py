"""YOLO (ultralytics) layout: a data.yaml, ``images/...`` with ``labels/...`` txt files beside them.

Each label line is ``cls xc yc w h`` (a box) or ``cls x1 y1 x2 y2 ...`` (a YOLO-seg polygon),
normalised to [0, 1]. data.yaml gives ``path`` (the dataset root; relative paths are taken from the
yaml's folder, which is also the default), ``train``/``val`` (a folder, a txt list of images, or a
list of either) and ``names`` (a list, or a dict ``{class id: name}``). Detection results are
written with category id = class id + 1, unless data.yaml has ``coco_category_ids`` (the converter
writes it, so a COCO set converted to YOLO keeps its ids).
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from vision_mtl.config import SourceConfig
from vision_mtl.data import problems as kinds
from vision_mtl.data.image_io import image_size, list_images
from vision_mtl.data.problems import ProblemLog
from vision_mtl.data.rasterize import segment_area
from vision_mtl.data.readers.context import ReadContext
from vision_mtl.data.records import Instances, Record, SourceIndex, checked_box
from vision_mtl.errors import DataError, first_line


class DataYaml:
    """A parsed data.yaml: dataset root, class ids -> names, and the ids results are written with."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            data = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            mark = getattr(exc, "problem_mark", None)  # a YAML syntax error: what and where, on one line
            what = f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else first_line(exc)
            raise DataError(f"cannot read YOLO data file '{self.path}': {what}") from exc
        if not isinstance(data, dict) or "names" not in data:
            raise DataError(f"YOLO data file '{self.path}' has no 'names'; expected path/train/val/names keys")
        names = data["names"]
        names = dict(enumerate(names)) if isinstance(names, list) else names
        if not isinstance(names, dict) or not all(isinstance(k, int) for k in names):
            raise DataError(f"YOLO data file '{self.path}': 'names' must be a list or a {{class id: name}} mapping")
        self.data = data
        self.class_ids = sorted(names)  # contiguous class i <-> YOLO class id class_ids[i]
        self.names = [str(names[k]) for k in self.class_ids]
        self.category_ids = list(data.get("coco_category_ids") or [k + 1 for k in self.class_ids])
        if len(self.category_ids) != len(self.names):
            raise DataError(f"YOLO data file '{self.path}': coco_category_ids has {len(self.category_ids)} ids "
                            f"for {len(self.names)} names")
        self.root = self.path.parent / str(data.get("path") or ".")

    def images(self, split: str) -> list[tuple[Path, str]]:
        """(image path, key) of a split; the key is relative to its images folder (or the root)."""
        entries = self.data.get(split)
        if entries is None:
            raise DataError(f"YOLO data file '{self.path}' has no '{split}' entry; set the source's 'split'")
        found = []
        for entry in entries if isinstance(entries, list) else [entries]:
            location = self.root / str(entry)
            if location.is_dir():
                found += [(p, p.relative_to(location).as_posix()) for p in list_images(location)]
            elif location.is_file():
                for line in location.read_text().splitlines():
                    if line.strip():
                        path = location.parent / line.strip()
                        found.append((path, _relative(path, self.root)))
            else:
                raise DataError(f"YOLO data file '{self.path}': {split} entry '{location}' not found")
        return found


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def label_path(image: Path) -> Path:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the last ``images`` folder becomes ``labels``)."""
    parts = list(image.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def parse_labels(path: Path, size: tuple[int, int], class_index: dict[int, int],
                 problems: ProblemLog) -> tuple[Instances, bool]:
    """The objects of one label file in pixels, and whether it holds polygons; bad lines are reported."""
    height, width = size
    boxes, labels, areas, segments = [], [], [], []
    has_polygons = False
    for line in path.read_text().splitlines():
        parsed = _parse_line(line)
        if parsed is None:
            if line.strip():
                problems.add(path, kinds.MALFORMED_LABEL)
            continue
        cls, values = parsed
        if cls not in class_index:
            problems.add(path, kinds.UNKNOWN_CLASS)
            continue
        if len(values) == 4:
            xc, yc, w, h = values
            box = [(xc - w / 2) * width, (yc - h / 2) * height, (xc + w / 2) * width, (yc + h / 2) * height]
            points = None
        elif len(values) < 6:
            problems.add(path, kinds.SHORT_POLYGON)
            continue
        else:
            points = [(x * width, y * height) for x, y in zip(values[0::2], values[1::2])]
            xs, ys = [x for x, _ in points], [y for _, y in points]
            box = [min(xs), min(ys), max(xs), max(ys)]
            has_polygons = True
        clipped = checked_box(box, size, path, problems)
        if clipped is None:
            continue
        segment = None if points is None else [[min(max(v, 0.0), limit) for x, y in points
                                                for v, limit in ((x, width), (y, height))]]
        boxes.append(clipped)
        labels.append(class_index[cls])
        areas.append(segment_area(segment, height, width) if segment else
                     (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]))
        segments.append(segment)
    return Instances.build(boxes, labels, [False] * len(labels), areas, segments), has_polygons


def _parse_line(line: str) -> tuple[int, list[float]] | None:
    parts = line.split()
    if len(parts) < 3 or len(parts) % 2 == 0:  # class + an even number of coordinates
        return None
    try:
        cls, values = int(parts[0]), [float(v) for v in parts[1:]]
    except ValueError:
        return None
    return (cls, values) if all(map(math.isfinite, values)) else None


def read(cfg: SourceConfig, ctx: ReadContext) -> SourceIndex:
    """Format ``yolo``: the images of data.yaml's ``split`` entry with their label files.

    A missing label file leaves the image unlabelled (reported); an empty one means "no objects".
    Segmentation is provided when any file holds polygons; box-only objects are then ignore regions.
    """
    spec = DataYaml(ctx.file(cfg.annotations, "annotations"))
    class_index = {k: i for i, k in enumerate(spec.class_ids)}
    records, any_polygons = [], False
    for image_id, (path, key) in enumerate(spec.images(cfg.split or ctx.split), start=1):
        if not ctx.wanted(key):
            continue
        if not path.is_file():
            ctx.problems.add(path, kinds.MISSING_IMAGE)
            continue
        labels_file = label_path(path)
        if not labels_file.is_file():
            ctx.problems.add(labels_file, kinds.MISSING_LABELS)
            records.append(Record(path, key, image_id))
            continue
        try:
            size = image_size(path)
        except DataError:
            ctx.problems.add(path, kinds.UNREADABLE_IMAGE)
            continue
        instances, has_polygons = parse_labels(labels_file, size, class_index, ctx.problems)
        any_polygons |= has_polygons
        names = [spec.names[i] for i in sorted(set(instances.labels.tolist()))]
        records.append(Record(path, key, image_id, size, instances, classes=names))
    provides = {"detection"} | ({"segmentation"} if any_polygons else set())
    if ctx.multi_label:  # the classes present are a multi-label target only
        provides.add("classification")
    return SourceIndex(ctx.name, records, provides,
                       {"detection": spec.names, "segmentation": ["background", *spec.names],
                        "classification": spec.names},
                       declared={"detection", "segmentation", "classification"},
                       category_ids=spec.category_ids, seg_from_instances=True)
