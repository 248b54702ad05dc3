"""Class lists across sources: discovered from the training sources, checked to agree, mapped by name.

A source's class list is *declared* (COCO categories, YOLO names, mask value names, ``classes:``)
or *observed* (the labels a CSV or folder tree happens to use). Declared lists of a task must hold
the same names (after ``class_map``), in any order; observed labels must fit in them. A mismatch is
a :class:`DataError` at start-up naming the sources and the classes, never a silently wrong model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vision_mtl.data.records import SourceIndex
from vision_mtl.data.sample import IGNORE_INDEX
from vision_mtl.errors import DataError

FORMATS_FOR = {
    "classification": "csv, imagefolder, files with labels, or coco/yolo with multi_label",
    "detection": "coco, yolo, or files with annotations",
    "segmentation": "masks, coco, yolo-seg, or files with masks",
}


def mapped_names(source: SourceIndex, task: str) -> list[str]:
    """The source's class names for ``task`` after its ``class_map`` (renamed, merged, dropped)."""
    names = (source.class_map.get(n, n) for n in source.classes[task])
    return list(dict.fromkeys(n for n in names if n is not None))


def discover_classes(sources: list[SourceIndex], tasks: list[str], split: str = "data.train") -> dict[str, list[str]]:
    """Class names per task from the training sources (saved in every checkpoint)."""
    classes = {}
    for task in tasks:
        providers = [s for s in sources if task in s.tasks]
        if not providers:
            raise DataError(f"model.tasks has {task} but no {split} source labels it; add a source that does "
                            f"({FORMATS_FOR[task]}) or drop {task} from model.tasks")
        declared = [s for s in providers if task in s.declared]
        if declared:
            reference = mapped_names(declared[0], task)
            for source in declared[1:]:
                _check_same(task, mapped_names(source, task), source.name, reference, declared[0].name)
            for source in providers:
                extra = sorted(set(mapped_names(source, task)) - set(reference))
                if extra:
                    raise DataError(f"{source.name} has {task} labels {extra} that {declared[0].name} does not "
                                    "declare; rename them with class_map or fix the labels")
            classes[task] = reference
        else:
            classes[task] = sorted({n for s in providers for n in mapped_names(s, task)})
    return classes


def _check_same(task: str, names: list[str], name: str, reference: list[str], reference_name: str) -> None:
    if set(names) != set(reference):
        only, missing = sorted(set(names) - set(reference)), sorted(set(reference) - set(names))
        raise DataError(f"{task} classes of {name} differ from {reference_name}: only in the first {only}, "
                        f"missing from it {missing}; make them agree with the source's class_map")


@dataclass
class ClassMaps:
    """How one source's class ids become the model's: ``-1`` (or ignore, for masks) = not a model class.

    ``detection[i]`` for instance label ``i``; ``instance_values[i]`` the mask value painted for it;
    ``mask_values[v]`` for value ``v`` of a mask file, ``mask_known[v]`` whether ``v`` is expected
    there (ignore, or a value the source names); ``classification`` by name.
    """

    detection: np.ndarray
    instance_values: np.ndarray
    mask_values: np.ndarray
    mask_known: np.ndarray
    classification: dict[str, int]

    @staticmethod
    def build(source: SourceIndex, classes: dict[str, list[str]]) -> ClassMaps:
        """Maps onto ``classes``; every declared list must hold exactly the model's names."""
        for task in source.tasks & source.declared:
            _check_same(task, mapped_names(source, task), source.name, classes[task], "the model's classes")
        lut = {task: _lookup(source, task, classes) for task in source.tasks}
        detection = lut.get("detection", np.zeros(0, np.int64))
        seg = lut.get("segmentation")
        instance_values = mask_values = np.zeros(0, np.int64)
        mask_known = np.zeros(0, bool)
        if seg is not None:
            seg = np.where(seg < 0, IGNORE_INDEX, seg)
            instance_values = seg[1:]  # instance label i is mask class i + 1 (0 is background)
            file_values = source.mask_values if source.mask_values is not None else np.arange(256)
            mask_values = np.full(len(file_values), IGNORE_INDEX, np.int64)
            named = file_values < len(seg)
            mask_values[named] = seg[file_values[named]]
            mask_known = named | (file_values == IGNORE_INDEX) | (source.mask_values is not None)
        names = source.classes.get("classification", [])
        classification = {n: int(i) for n, i in zip(names, lut.get("classification", [])) if i >= 0}
        return ClassMaps(detection, instance_values, mask_values, mask_known, classification)


def _lookup(source: SourceIndex, task: str, classes: dict[str, list[str]]) -> np.ndarray:
    index = {n: i for i, n in enumerate(classes[task])}
    mapped = (source.class_map.get(n, n) for n in source.classes[task])
    return np.array([index.get(n, -1) if n is not None else -1 for n in mapped], np.int64)
