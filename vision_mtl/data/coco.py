"""COCO instances JSON: boxes and category ids per image, with a contiguous class mapping."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vision_mtl.errors import DataError


@dataclass
class CocoImage:
    """Detection labels of one image in input-file pixels, class indices contiguous from 0."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float32 xyxy
    labels: np.ndarray  # [N] int64


@dataclass
class CocoIndex:
    """What a COCO JSON gives the loaders: the per-image labels and the category table.

    ``category_ids[i]`` is the original COCO id of contiguous class ``i``, used to write results
    back with the ids the annotation file uses.
    """

    images: dict[str, CocoImage]  # keyed by file_name
    class_names: list[str]
    category_ids: list[int]
    dataset: dict  # the parsed JSON, the ground truth pycocotools evaluates against


def load_coco(path: str | Path) -> CocoIndex:
    """Read a COCO instances file; crowd regions are left out of the detection targets."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO annotations '{path}' not found; check data.<split>.annotations and data.root")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"COCO annotations '{path}' is not valid JSON: {exc}") from exc
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"COCO annotations '{path}' has no '{key}' list; is it an instances file?")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    index_of = {c["id"]: i for i, c in enumerate(categories)}
    per_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0) and ann["image_id"] in per_image:
            per_image[ann["image_id"]].append(ann)
    images = {}
    for img in data["images"]:
        anns = [a for a in per_image[img["id"]] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.array([index_of[a["category_id"]] for a in anns], dtype=np.int64)
        images[img["file_name"]] = CocoImage(img["id"], img["file_name"], img["width"], img["height"], boxes, labels)
    return CocoIndex(images, [c["name"] for c in categories], [c["id"] for c in categories], data)
