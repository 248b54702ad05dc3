"""Tiny scenes written in every dataset layout, for the data tests (generated in tmp folders).

The same objects become a COCO JSON (polygons, non-contiguous category ids), YOLO-seg and YOLO
box txt files, class-index and palette mask PNGs, a labels CSV and an ImageFolder tree. Each writer
works from the geometry here, not from the library's readers or converter, so the tests compare
independent encodings of one truth. Mask PNGs are rasterised by pixel-centre containment (OpenCV),
COCO/YOLO polygons by pycocotools: the two agree up to edge pixels.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = {3: "square", 7: "triangle", 11: "bar"}  # COCO ids on purpose not 1..N
NAMES = list(CATEGORIES.values())
SEG_CLASSES = ["background", *NAMES]
PALETTE = [0, 0, 0, 220, 20, 60, 0, 128, 255, 250, 170, 30]  # background, square, triangle, bar


@dataclass
class Scene:
    key: str  # file name relative to the images folder
    size: tuple[int, int]  # (h, w)
    label: str  # image-level class
    objects: list[tuple[int, list[float]]] = field(default_factory=list)  # (category id, polygon xy...)


SCENES = [
    Scene("a.png", (48, 64), "indoor", [(3, [4, 4, 20, 4, 20, 20, 4, 20]), (7, [30, 10, 52, 10, 41, 34])]),
    Scene("b.png", (64, 40), "outdoor", [(11, [5, 40, 35, 40, 35, 48, 5, 48]), (3, [2, 2, 14, 2, 14, 14, 2, 14])]),
    Scene("sub/c.png", (56, 56), "indoor", [(7, [10, 50, 30, 12, 50, 50]), (11, [40, 4, 52, 4, 52, 30, 40, 30])]),
    Scene("d.png", (40, 72), "outdoor", []),  # labelled, no objects
]


def polygon_mask(polygon: list[float], size: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the polygon."""
    contour = np.array(polygon, np.float32).reshape(-1, 1, 2)
    h, w = size
    inside = [[cv2.pointPolygonTest(contour, (x + 0.5, y + 0.5), False) > 0 for x in range(w)] for y in range(h)]
    return np.array(inside)


def class_mask(scene: Scene) -> np.ndarray:
    """Class-index mask (0 background, 1 + position in NAMES), later objects on top."""
    mask = np.zeros(scene.size, np.uint8)
    for cid, polygon in scene.objects:
        mask[polygon_mask(polygon, scene.size)] = NAMES.index(CATEGORIES[cid]) + 1
    return mask


def box(polygon: list[float]) -> list[float]:
    xs, ys = polygon[0::2], polygon[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def write_images(folder: Path, scenes: list[Scene] = SCENES) -> Path:
    colours = np.array([[90, 90, 90], [220, 20, 60], [0, 128, 255], [250, 170, 30]], np.uint8)
    for i, scene in enumerate(scenes):
        image = colours[class_mask(scene)] + np.uint8(i)  # each image differs even without objects
        path = folder / scene.key
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    return folder


def coco_json(scenes: list[Scene] = SCENES, crowd: dict[str, list[float]] | None = None) -> dict:
    """COCO instances; ``crowd[key]`` adds a crowd 'square' region (RLE) over that polygon."""
    images, annotations = [], []
    for image_id, scene in enumerate(scenes, start=100):  # ids not 1..N either
        h, w = scene.size
        images.append({"id": image_id, "file_name": scene.key, "height": h, "width": w})
        for cid, polygon in scene.objects:
            x1, y1, x2, y2 = box(polygon)
            area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cid,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "segmentation": [polygon],
                                "iscrowd": 0})
        if crowd and scene.key in crowd:
            rle = mask_utils.encode(np.asfortranarray(polygon_mask(crowd[scene.key], scene.size).astype(np.uint8)))
            x1, y1, x2, y2 = box(crowd[scene.key])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 3, "iscrowd": 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask_utils.area(rle)),
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in CATEGORIES.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(path: Path, scenes: list[Scene] = SCENES, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco_json(scenes, **kwargs)))
    return path


def write_yolo(root: Path, scenes: list[Scene] = SCENES, polygons: bool = True) -> Path:
    """``root/images/train``, ``root/labels/train`` and ``root/data.yaml`` (names as a dict)."""
    write_images(root / "images" / "train", scenes)
    for scene in scenes:
        h, w = scene.size
        lines = []
        for cid, polygon in scene.objects:
            cls = NAMES.index(CATEGORIES[cid])
            if polygons:
                values = [v / (w if i % 2 == 0 else h) for i, v in enumerate(polygon)]
            else:
                x1, y1, x2, y2 = box(polygon)
                values = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
            lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in values))
        label = (root / "labels" / "train" / scene.key).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines))
    spec = {"path": ".", "train": "images/train", "val": "images/train", "names": dict(enumerate(NAMES))}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


def write_masks(folder: Path, scenes: list[Scene] = SCENES, palette: bool = False) -> Path:
    for scene in scenes:
        image = Image.fromarray(class_mask(scene))
        if palette:
            image = image.convert("P")
            image.putpalette(PALETTE)
        path = (folder / scene.key).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return folder


def write_label_csv(path: Path, rows: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        writer.writerows(rows.items())
    return path


def write_imagefolder(root: Path, scenes: list[Scene] = SCENES) -> Path:
    for scene in scenes:
        write_images(root / scene.label, [Scene(Path(scene.key).name, scene.size, scene.label, scene.objects)])
    return root
