"""The Python face of inference: ``Predictor("best.pt").predict(images)`` answers per image, in the
image's own pixels, with class names, from a checkpoint or an exported ONNX model alike.

    from vision_mtl import Predictor
    predictor = Predictor("runs/shapes/best.pt", conf=0.25)
    for result in predictor.predict(["a.jpg", "b.png"]):
        print(result.top_classes(3), result.label_names(), result.boxes, result.mask.shape)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from vision_mtl.config import TASKS
from vision_mtl.data.image_io import list_images
from vision_mtl.data.sample import Batch
from vision_mtl.engine.preprocess import collate_prepared, prepare_image, read_prepared
from vision_mtl.engine.results import ImageResult, split_predictions
from vision_mtl.engine.runners import load_runner
from vision_mtl.errors import ConfigError, DataError, check_int
from vision_mtl.utils.runtime import Precision

TASK_NAMES = {"cls": "classification", "det": "detection", "seg": "segmentation", **{t: t for t in TASKS}}
ImageInput = Union[str, Path, np.ndarray, torch.Tensor, Sequence[Union[str, Path, np.ndarray]]]


def parse_tasks(tasks: str | Sequence[str] | None, available: list[str]) -> list[str]:
    """``"cls,det"`` or ``["detection"]`` -> full task names, in the model's order; None -> all the
    model's tasks. Unknown names and tasks the model lacks are one-line errors."""
    if tasks is None:
        return list(available)
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    wanted = set()
    for name in names:
        if name not in TASK_NAMES:
            raise ConfigError(f"unknown task '{name}'; choose from cls, det, seg (or their full names)")
        if TASK_NAMES[name] not in available:
            raise ConfigError(f"task '{name}' is not one of this model's tasks ({', '.join(available)})")
        wanted.add(TASK_NAMES[name])
    return [t for t in available if t in wanted]


class Predictor:
    """A trained model answering per-image questions.

    ``weights``: a checkpoint (``.pt``) or an ONNX file from ``tools/export_onnx.py``. ``tasks``:
    the tasks to answer (default: all of the model's). ``conf``: the lowest detection score kept
    (the model's own ``model.detection.score_thresh`` is the floor below which nothing is
    produced). ``image_size``: the letterbox side (default: the training size). ``device``:
    ``auto``, ``cpu`` or ``cuda[:N]`` for checkpoints; ONNX models use onnxruntime's CUDA provider
    when installed. ``precision``: ``fp32``, ``bf16`` or ``auto`` for checkpoints: bf16 autocast
    where the device computes bfloat16 natively (CPU: AVX-512 BF16 or AMX), fp32 elsewhere (what
    runs is ``runner.precision``). ``overrides``: further config ``key=value`` pairs.
    """

    def __init__(self, weights: str | Path, *, tasks: str | Sequence[str] | None = None, conf: float = 0.25,
                 image_size: int | None = None, device: str | None = None, precision: Precision = "fp32",
                 overrides: Sequence[str] = ()):
        if not 0.0 <= conf <= 1.0:
            raise ConfigError(f"conf={conf} is not a score; give a value between 0 and 1")
        if image_size is not None:
            check_int("image_size", image_size, 32, 32)
        extra = [*overrides, *([f"data.image_size={image_size}"] if image_size is not None else []),
                 *([f"train.device={device}"] if device else [])]
        self.runner, cfg = load_runner(weights, overrides=extra, precision=precision)
        self.weights = Path(weights)
        self.image_size = cfg.data.image_size
        self.tasks = parse_tasks(tasks, self.runner.tasks)
        self.conf = conf
        self.classes = {task: self.runner.info.classes[task] for task in self.tasks}

    @property
    def multi_label(self) -> bool:
        return self.runner.info.multi_label

    @property
    def category_ids(self) -> list[int]:
        """The original (e.g. COCO) category id of each detection class; 1..C when the training
        data had none."""
        ids = self.runner.info.category_ids
        return list(ids) if ids else list(range(1, len(self.runner.info.classes.get("detection", [])) + 1))

    def predict(self, images: ImageInput, batch_size: int = 16) -> list[ImageResult]:
        """Results for an image path, a folder, a list of paths or arrays, an HxWx3 (or NxHxWx3)
        uint8 RGB array, or a [3,H,W] / [B,3,H,W] RGB tensor (uint8, or float in [0, 1]).
        Images of any size; each result is in its own image's pixels. Unreadable files raise.
        A float tensor outside [0, 1] is refused, not guessed at: a dark 0..255 image can lie in
        [0, 1] too, so scaling by the values seen would answer differently for similar pictures."""
        check_int("batch_size", batch_size, 1)
        results: list[ImageResult] = []
        for chunk in _chunks(_image_items(images), batch_size):
            samples = [read_prepared(item, self.image_size, meta) if isinstance(item, (str, Path))
                       else prepare_image(item, self.image_size, meta) for item, meta in chunk]
            results.extend(self.predict_batch(collate_prepared(samples)))
        return results

    def predict_batch(self, batch: Batch) -> list[ImageResult]:
        """Results for a batch already letterboxed to ``image_size`` (the folder pipeline's path)."""
        results = split_predictions(self.runner(batch.images, self.tasks), batch.meta)
        for result in results:
            result.classes = self.classes
            if result.scores is not None and self.conf > 0:
                keep = result.scores >= self.conf
                result.boxes, result.scores, result.labels = result.boxes[keep], result.scores[keep], result.labels[keep]
        return results


def _image_items(images: ImageInput) -> Iterator[tuple[str | Path | np.ndarray, dict[str, Any]]]:
    """Each input image as (path or HxWx3 uint8 RGB array, meta)."""
    if isinstance(images, (str, Path)):
        path = Path(images)
        paths = list_images(path) if path.is_dir() else [path]
        if not paths:
            raise DataError(f"no images in folder '{path}'")
        yield from ((p, {"path": str(p)}) for p in paths)
    elif isinstance(images, torch.Tensor):
        batch = images.unsqueeze(0) if images.ndim == 3 else images
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise DataError(f"a tensor of images must be [3,H,W] or [B,3,H,W] RGB, got {list(images.shape)}")
        if batch.is_floating_point():
            batch = _unit_to_uint8(batch)
        yield from ((image, {}) for image in batch.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        yield from ((_rgb(image), {}) for image in images)
    elif isinstance(images, np.ndarray):
        yield _rgb(images), {}
    elif isinstance(images, Iterable):
        for item in images:
            yield (item, {"path": str(item)}) if isinstance(item, (str, Path)) else (_rgb(item), {})
    else:
        raise DataError(_not_an_image(images))


def _unit_to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """Float RGB in [0, 1] -> uint8 0..255; other values (0..255 floats, normalised images, NaN)
    are a one-line error rather than clamped to white or black."""
    if batch.numel():
        low, high = float(batch.min()), float(batch.max())
        if not (low >= 0.0 and high <= 1.0):
            raise DataError(f"a float image tensor must hold RGB values in [0, 1], got {low:.4g}..{high:.4g}; "
                            "pass uint8 0..255, or divide 0..255 values by 255 (and undo any normalisation)")
    return (batch * 255).round().to(torch.uint8)


def _not_an_image(item: object) -> str:
    return (f"cannot read {type(item).__name__} {item!r:.40} as an image; give a path, a folder, an HxWx3 uint8 "
            "numpy array or an RGB tensor (or a list of them)")


def _rgb(image: np.ndarray) -> np.ndarray:
    """HxW gray, HxWx3 RGB or HxWx4 RGBA uint8 -> HxWx3 RGB."""
    if not isinstance(image, np.ndarray):
        raise DataError(_not_an_image(image))
    if image.dtype != np.uint8:
        raise DataError(f"numpy images must be uint8 RGB, got {image.dtype}; scale to 0..255 first")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[..., :3])
    raise DataError(f"a numpy image must be HxW, HxWx3 or HxWx4, got shape {list(image.shape)}")


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
