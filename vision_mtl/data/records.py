"""The one record form every reader produces, so everything after reading is shared by all formats.

A reader turns its files into a :class:`SourceIndex`: per image a :class:`Record` holding the path,
the object annotations in original pixels (:class:`Instances`), a mask file or nothing (masks from
instances are rasterised when the image is loaded, never held for the whole set), and image-level
classes. Class ids and names in a record are the source's own; the dataset maps them to the model's classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vision_mtl.data import problems as kinds
from vision_mtl.data.problems import ProblemLog

# Box edges this far outside the image are rounding: clipped without a report.
BOUNDS_TOLERANCE = 1.0

# A segment: COCO polygons (a list of flat [x1, y1, x2, y2, ...] lists, original pixels) or a COCO RLE dict.
Segment = list[list[float]] | dict


@dataclass
class Instances:
    """Objects of one image in original pixels, labelled with the source's class indices.

    Crowd regions are kept (COCOeval ignores detections on them; masks mark them ignore) but are
    never detection targets. ``areas`` are segment areas where known (COCOeval's size ranges).
    """

    boxes: np.ndarray  # [N, 4] float32 xyxy
    labels: np.ndarray  # [N] int64
    crowd: np.ndarray  # [N] bool
    areas: np.ndarray  # [N] float32
    segments: list[Segment | None]  # per object; None: box only

    @staticmethod
    def build(boxes: list, labels: list, crowd: list, areas: list, segments: list) -> Instances:
        return Instances(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                         np.asarray(crowd, bool), np.asarray(areas, np.float32), list(segments))


@dataclass
class Record:
    """One image of a source and its labels; ``None`` means "not labelled" for that kind of label."""

    path: Path
    key: str  # the image's name relative to the source's image folder (meta["key"], GT file_name)
    image_id: int  # source-local; the dataset makes ids unique across sources
    size: tuple[int, int] | None = None  # (h, w) the instances are annotated at; None: unknown
    instances: Instances | None = None
    mask_file: Path | None = None  # PNG of class values
    classes: list[str] | None = None  # image-level class names


@dataclass
class SourceIndex:
    """Everything read from one configured source.

    ``classes[task]``: the source's class names, index = the ids its records use (for segmentation
    the mask value). ``declared``: tasks whose list is a fixed set (COCO categories, YOLO names,
    ``classes:``) rather than the labels seen in the files. ``category_ids[i]``: the id written to
    detection results for class ``i``. ``seg_from_instances``: masks are rasterised from instances
    (else read from ``mask_file``). ``mask_values``: mask file value -> class index, 255 = ignore.
    """

    name: str
    records: list[Record]
    provides: set[str]
    classes: dict[str, list[str]]
    declared: set[str] = field(default_factory=set)
    category_ids: list[int] | None = None
    seg_from_instances: bool = False
    mask_values: np.ndarray | None = None
    class_map: dict[str, str | None] = field(default_factory=dict)
    tasks: set[str] = field(default_factory=set)
    weight: float = 1.0

    def labelled(self, record: Record) -> set[str]:
        """The tasks ``record`` carries labels for, within the tasks this source is used for."""
        tasks = set()
        if "detection" in self.tasks and record.instances is not None:
            tasks.add("detection")
        if "segmentation" in self.tasks and (record.mask_file is not None or
                                             (self.seg_from_instances and record.instances is not None)):
            tasks.add("segmentation")
        if "classification" in self.tasks and record.classes is not None:
            tasks.add("classification")
        return tasks

    def has_target(self, record: Record, task: str) -> bool:
        """Whether ``record`` gives ``task`` something to learn: a box (detection), a mask file or a
        painted object (segmentation), an image-level class (classification)."""
        if task not in self.labelled(record):
            return False
        if task == "classification":
            return bool(record.classes)
        objects = record.instances
        if task == "detection":
            return bool((~objects.crowd).any())
        return record.mask_file is not None or any(s is not None and not c for s, c in zip(objects.segments, objects.crowd))


def checked_box(box: list[float], size: tuple[int, int], where: object, problems: ProblemLog) -> list[float] | None:
    """``box`` (xyxy pixels) clipped to the image; None when nothing of it is left. Both are reported."""
    height, width = size
    x1, y1, x2, y2 = box
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        problems.add(where, kinds.DEGENERATE_BOX)
        return None
    if max(abs(a - b) for a, b in zip(box, clipped)) > BOUNDS_TOLERANCE:
        problems.add(where, kinds.BOX_OUT_OF_BOUNDS)
    return clipped
