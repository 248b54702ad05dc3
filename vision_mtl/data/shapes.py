"""Deterministic synthetic "shapes" dataset written as real files.

Each image has a textured background (the image-level scene label) and 1-4 solid
shapes (detection boxes, polygons and a semantic mask). The files use the same
formats as real data (JPEG + COCO JSON + mask PNG + labels CSV), so the normal
loaders are exercised end to end without any download.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from vision_mtl.errors import DataError

SHAPE_CLASSES: tuple[str, ...] = ("circle", "rectangle", "triangle", "star")
SCENE_CLASSES: tuple[str, ...] = ("stripes", "checker", "dots", "smooth")
GENERATOR_VERSION: int = 1
# Written last into every generated folder: the proof that the folder is ours to replace.
MARKER = ".vision_mtl_synthetic.json"
GENERATOR = "vision_mtl.shapes"

_SPLITS = ("train", "val")
_MAX_OBJECTS = 4
_PLACE_TRIES = 30
_MIN_VISIBLE_FRAC = 0.6
_MIN_VISIBLE_PIXELS = 40
_NOISE_SIGMA = 4.0

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------- textures
# Each returns a float32 weight map t in [0, 1]; pixel colour = A + t * (B - A).

def _axes(rng: np.random.Generator, size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by `angle`, with a random sub-pixel phase."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    ox, oy = rng.uniform(0, 32, 2)
    return xx * c + yy * s + ox, -xx * s + yy * c + oy


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    u, _ = _axes(rng, size, rng.uniform(0, np.pi))
    period = rng.uniform(6, 16)
    return (np.mod(u, period) < period / 2).astype(np.float32)


def _checker(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _axes(rng, size, np.deg2rad(rng.uniform(-15, 15)))
    cell = rng.uniform(6, 16)
    return (np.mod(np.floor(u / cell) + np.floor(v / cell), 2)).astype(np.float32)


def _dots(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _axes(rng, size, rng.uniform(0, np.pi / 2))
    spacing, radius = rng.uniform(6, 11), rng.uniform(1.2, 3.0)
    du, dv = np.mod(u, spacing) - spacing / 2, np.mod(v, spacing) - spacing / 2
    return (du * du + dv * dv <= radius * radius).astype(np.float32)


def _smooth(rng: np.random.Generator, size: int) -> np.ndarray:
    u, _ = _axes(rng, size, rng.uniform(0, 2 * np.pi))
    return (u - u.min()) / max(float(u.max() - u.min()), 1e-6)


_TEXTURES: tuple[Callable[[np.random.Generator, int], np.ndarray], ...] = (
    _stripes, _checker, _dots, _smooth)


# ------------------------------------------------------------------- shapes
# Each returns polygon vertices (N, 2) of a randomly rotated shape, any scale.

def _ring(angles: np.ndarray, radii: np.ndarray | float) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.reshape(radii, (-1, 1))


def _circle(rng: np.random.Generator) -> np.ndarray:
    return _ring(np.linspace(0, 2 * np.pi, 64, endpoint=False), 1.0)


def _rectangle(rng: np.random.Generator) -> np.ndarray:
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [rng.uniform(0.5, 2.0), 1.0]
    angle = rng.uniform(0, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    return corners @ np.array([[c, s], [-s, c]])


def _triangle(rng: np.random.Generator) -> np.ndarray:
    return _ring(rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3, 1.0)


def _star(rng: np.random.Generator) -> np.ndarray:
    angles = rng.uniform(0, 2 * np.pi) + np.arange(10) * np.pi / 5
    return _ring(angles, np.tile([1.0, 0.45], 5))


_SHAPES: tuple[Callable[[np.random.Generator], np.ndarray], ...] = (
    _circle, _rectangle, _triangle, _star)


# -------------------------------------------------------------------- image

def _background_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two colours whose channel-sum (L1) distance lies in [40, 110]."""
    a = rng.integers(0, 256, 3)
    delta = rng.uniform(40, 110) * rng.dirichlet(np.ones(3))
    sign = np.where(a + delta <= 255, 1, -1)
    return a.astype(np.float32), np.round(a + sign * delta).astype(np.float32)


def _object_colour(rng: np.random.Generator, bg: np.ndarray, used: list[np.ndarray]) -> np.ndarray:
    """A colour far (L1 >= 120) from both background colours and apart from other objects."""
    cand = rng.integers(0, 256, (64, 3)).astype(np.float32)
    d_bg = np.abs(cand[:, None] - bg[None]).sum(-1).min(1) - 120
    d_obj = (np.abs(cand[:, None] - np.array(used)[None]).sum(-1).min(1) - 60) if used else d_bg
    score = np.minimum(d_bg, d_obj)
    good = np.flatnonzero(score >= 0)
    return cand[good[0] if good.size else int(np.argmax(score))]


def _render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, int, list[int]]:
    """One image: RGB uint8, instance map (0 = background, k = k-th instance), scene, classes."""
    scene = int(rng.integers(len(SCENE_CLASSES)))
    colour_a, colour_b = _background_colours(rng)
    t = _TEXTURES[scene](rng, size)[..., None]
    image = colour_a + t * (colour_b - colour_a)

    inst = np.zeros((size, size), np.int16)
    classes: list[int] = []
    colours: list[np.ndarray] = []
    visible: list[int] = []
    total: list[int] = []
    canvas = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, _MAX_OBJECTS + 1))):
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        colour = _object_colour(rng, np.stack([colour_a, colour_b]), colours)
        for _ in range(_PLACE_TRIES):
            verts = _SHAPES[cls](rng)
            verts = verts - verts.min(0)
            verts *= rng.uniform(0.14, 0.45) * size / verts.max()
            verts += rng.uniform(0, 1, 2) * (size - 1 - verts.max(0))
            canvas[:] = 0
            cv2.fillPoly(canvas, [np.round(verts).astype(np.int32)], 1, lineType=cv2.LINE_8)
            own = canvas.astype(bool)
            area = int(own.sum())
            covered = np.bincount(inst[own], minlength=len(classes) + 1)[1:]
            left = np.array(visible, dtype=np.int64) - covered
            ok = (left >= np.maximum(_MIN_VISIBLE_FRAC * np.array(total), _MIN_VISIBLE_PIXELS)).all()
            if area >= _MIN_VISIBLE_PIXELS and ok:
                inst[own] = len(classes) + 1
                visible = [*left.tolist(), area]
                total.append(area)
                classes.append(cls)
                colours.append(colour)
                break

    fg = inst > 0
    if colours:
        image[fg] = np.array(colours)[inst[fg] - 1]
    image += rng.normal(0.0, _NOISE_SIGMA, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), inst, scene, classes


def _instance_annotation(visible: np.ndarray) -> dict:
    """COCO bbox/area/polygons of one instance's visible pixels.

    Contours are traced on the mask upsampled 2x and mapped back to COCO's
    pixel-corner coordinates, so each polygon runs a quarter pixel inside the
    mask's outer pixel edges and rasterizes back to the same pixels (IoU ~1.0;
    contours through pixel centres at 1x lose about half of the boundary pixels).
    """
    ys, xs = np.nonzero(visible)
    x0, y0 = int(xs.min()), int(ys.min())
    up = cv2.resize(visible.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return {
        "bbox": [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)],
        "area": float(len(xs)),
        "segmentation": [((c.reshape(-1) + 0.5) / 2).tolist() for c in contours if len(c) >= 3],
        "iscrowd": 0,
    }


def _write_split(out: Path, split_index: int, count: int, size: int, seed: int) -> None:
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    images, annotations, labels = [], [], []
    for i in range(count):
        rng = np.random.default_rng([seed, split_index, i])
        image, inst, scene, classes = _render(rng, size)
        name = f"{i:06d}"
        cv2.imwrite(str(out / "images" / f"{name}.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        lut = np.array([0] + [c + 1 for c in classes], np.uint8)
        cv2.imwrite(str(out / "masks" / f"{name}.png"), lut[inst])
        images.append({"id": i + 1, "file_name": f"{name}.jpg", "width": size, "height": size})
        labels.append((f"{name}.jpg", SCENE_CLASSES[scene]))
        for k, cls in enumerate(classes, start=1):
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1}
            annotations.append({**ann, **_instance_annotation(inst == k)})
    coco = {
        "info": {"description": "vision_mtl synthetic shapes"},
        "images": images,
        "categories": [{"id": c + 1, "name": n, "supercategory": "shape"} for c, n in enumerate(SHAPE_CLASSES)],
        "annotations": annotations,
    }
    (out / "annotations.json").write_text(json.dumps(coco, separators=(",", ":")))
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "label"])
        writer.writerows(labels)


def _marker(root: Path) -> dict | None:
    """The generator's own marker in root, or None when root holds none (or one it did not write)."""
    try:
        meta = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def _is_current(root: Path, params: dict) -> bool:
    """Whether root holds a dataset this generator wrote with exactly these parameters."""
    meta = _marker(root)
    return meta is not None and all(meta.get(k) == v for k, v in params.items())


def ensure_shapes(root: str | Path, num_train: int = 2000, num_val: int = 200,
                  image_size: int = 128, seed: int = 0) -> Path:
    """Generate the dataset under root on first use (or when parameters changed); return root as Path.

    Only a missing or empty folder, or one holding this generator's marker file, is ever written:
    anything else is the user's data and is refused. Generation happens in a temporary sibling
    folder that is renamed into place at the end, so an interrupted run never leaves a half-written
    dataset behind.
    """
    root = Path(root)
    params = {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "num_train": num_train,
              "num_val": num_val, "image_size": image_size, "seed": seed}
    if _is_current(root, params):
        return root
    if root.exists() and _marker(root) is None and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"data.root '{root}' holds files the shapes generator did not write (no {MARKER}), so it "
                        "is left alone; set data.synthetic=null to train on them, or point data.root at a new folder")

    logger.info("generating shapes dataset in %s (%d images)...", root, num_train + num_val)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    old = root.parent / f"{root.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split_index, (split, count) in enumerate(zip(_SPLITS, (num_train, num_val))):
            _write_split(tmp / split, split_index, count, image_size, seed)
        meta = {**params, "shape_classes": list(SHAPE_CLASSES), "scene_classes": list(SCENE_CLASSES)}
        (tmp / MARKER).write_text(json.dumps(meta, indent=2))
        if root.exists():
            os.replace(root, old)
        os.replace(tmp, root)
    except OSError:
        if not _is_current(root, params):  # unless a concurrent process finished it first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return root
