"""COCO <-> YOLO conversion of boxes and polygons, read and checked by the same readers training uses.

COCO -> YOLO writes ``images/<split>/``, ``labels/<split>/*.txt`` and ``data.yaml`` (with the COCO
category ids under ``coco_category_ids``, so the way back, and evaluation on the YOLO copy, keep
them). Objects with polygons become YOLO-seg lines (an object made of several polygons is joined
into one by zero-width bridges, as ultralytics does), others box lines. YOLO cannot hold crowd
regions: they are left out and counted. YOLO -> COCO writes one instances JSON per split.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from vision_mtl.data.readers.coco import CocoFile, coco_dict
from vision_mtl.data.image_io import image_size
from vision_mtl.data.problems import OUTSIDE_FOLDER, UNREADABLE_IMAGE, ProblemLog
from vision_mtl.data.records import Instances
from vision_mtl.data.readers.yolo import DataYaml, label_path, parse_labels
from vision_mtl.errors import DataError


def coco_to_yolo(annotations: str | Path, images: str | Path, out: str | Path, split: str = "train",
                 link: bool = False) -> Counter:
    """Write a COCO split as YOLO under ``out`` (adding ``split`` to an existing data.yaml there).

    Images are copied (or symlinked with ``link``). Returns counts of what was written and left out.
    """
    problems = ProblemLog()
    coco = CocoFile(annotations, problems)
    images, out = Path(images), Path(out)
    spec_path = out / "data.yaml"
    spec = yaml.safe_load(spec_path.read_text()) if spec_path.is_file() else {"path": "."}
    if spec.get("names", coco.class_names) != coco.class_names:
        raise DataError(f"'{spec_path}' already holds other class names; write each dataset to its own folder")
    counts = Counter()
    split_dir = out / "images" / split
    for img, instances in zip(coco.images, coco.instances):
        target = _inside(split_dir, img["file_name"])
        if target is None:
            problems.add(img["file_name"], OUTSIDE_FOLDER)
            continue
        source = images / img["file_name"]
        if not source.is_file():
            counts["images missing (skipped)"] += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if link:
            target.unlink(missing_ok=True)
            os.symlink(source.resolve(), target)
        else:
            shutil.copy2(source, target)
        labels = label_path(target)
        if instances is None:  # unlabelled (its id is shared): no label file, nor one from an earlier run
            labels.unlink(missing_ok=True)
        else:
            lines = _yolo_lines(instances, img["height"], img["width"], counts)
            labels.parent.mkdir(parents=True, exist_ok=True)
            labels.write_text("".join(line + "\n" for line in lines))
        counts["images"] += 1
    spec.update({split: f"images/{split}", "names": coco.class_names})
    if coco.category_ids != list(range(1, len(coco.class_names) + 1)):
        spec["coco_category_ids"] = coco.category_ids
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    problems.emit(str(annotations))
    counts.update({f"{kind} (in the COCO file)": n for kind, n in problems.counts().items()})
    return counts


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


def yolo_to_coco(data_yaml: str | Path, split: str, out: str | Path) -> Counter:
    """Write the ``split`` of a YOLO dataset as a COCO instances JSON at ``out``.

    ``file_name`` is relative to the split's images folder; image ids are 1.. in sorted order; the
    category ids are data.yaml's ``coco_category_ids``, else class id + 1. Images without a label
    file are unlabelled, so they are left out (and counted).
    """
    spec = DataYaml(data_yaml)
    class_index = {k: i for i, k in enumerate(spec.class_ids)}
    problems = ProblemLog()
    entries, counts = [], Counter()
    for image_id, (path, key) in enumerate(spec.images(split), start=1):
        labels = label_path(path)
        if not labels.is_file():
            counts["images without a label file (left out)"] += 1
            continue
        try:
            size = image_size(path)
        except DataError:
            problems.add(path, UNREADABLE_IMAGE)
            continue
        instances, _ = parse_labels(labels, size, class_index, problems)
        entries.append((image_id, key, size, instances))
        counts["images"] += 1
        counts["objects"] += len(instances.labels)
    coco = coco_dict(entries, spec.names, spec.category_ids, with_segments=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(coco))
    problems.emit(str(data_yaml))
    counts.update({f"{kind} (in the YOLO files)": n for kind, n in problems.counts().items()})
    return counts
