"""JPEG decoding where the training batch lives: workers hand over the file's bytes, the batch is decoded
on the device (nvJPEG through ``torchvision.io.decode_jpeg`` on CUDA) and letterboxed there.

Only plain baseline RGB JPEGs are deferred (``image_io.read_jpeg_bytes``: no EXIF rotation, not
progressive, not CMYK or grayscale), which every decoder turns into the same image up to rounding.
Every other file, and every machine where ``data.decode`` resolves to ``cpu``, keeps the worker's
CPU decode. A file the device cannot decode is decoded on the CPU; one nothing can decode becomes an unlabelled padding image, reported like any unreadable image.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from vision_mtl.config import Config
from vision_mtl.data import problems as kinds
from vision_mtl.data.augment.presets import resolve_backend
from vision_mtl.data.problems import LoadProblems
from vision_mtl.data.sample import IGNORE_INDEX, Batch
from vision_mtl.data.transforms import content_shape
from vision_mtl.errors import ConfigError, first_line

logger = logging.getLogger(__name__)


def decodes_on_device(cfg: Config, device: torch.device) -> bool:
    """Whether training on ``device`` hands JPEGs to it undecoded (``data.decode``: ``auto`` = on a
    CUDA device with the device augmentation backend; ``device`` also on a CPU, where it only tests
    this path). The albumentations backend augments decoded images in the workers, so it rules this out."""
    backend = resolve_backend(cfg.train.augment, device)
    if cfg.data.decode == "device" and backend == "albumentations":
        raise ConfigError("data.decode=device needs train.augment.backend=device (albumentations augments decoded "
                          "images in the workers); set data.decode=cpu or train.augment.backend=device")
    return cfg.data.decode == "device" or (cfg.data.decode == "auto" and device.type == "cuda" and backend == "device")


def decode_pending(batch: Batch, problems: LoadProblems | None = None) -> Batch:
    """``batch`` with its still-encoded images decoded on the batch's device and letterboxed into their
    rows of ``batch.images`` (filled in place). A JPEG that cannot be decoded leaves its padding row and
    its sample loses every label (reported to ``problems``), so the step goes on without it."""
    if not batch.encoded:
        return batch
    positions = list(batch.encoded)
    for position, image in zip(positions, _decode(batch, positions)):
        meta = batch.meta[position]
        if image is None or tuple(image.shape[-2:]) != tuple(meta["orig_size"]):
            _unlabel(batch, position, problems, "cannot decode" if image is None else
                     f"decoded {tuple(image.shape[-2:])}, header said {meta['orig_size']}")
            continue
        height, width = content_shape(meta["orig_size"], meta["scale"])
        batch.images[position, :, :height, :width] = _resize(image, height, width)
    return Batch(batch.images, batch.targets, batch.meta)


def _decode(batch: Batch, positions: list[int]) -> list[torch.Tensor | None]:
    """[3, h, w] uint8 images on the batch's device: all at once (nvJPEG's batched decode on CUDA), or,
    when that fails, one by one with the CPU's decoder for any the device refuses (None: undecodable)."""
    device = batch.images.device
    data = [batch.encoded[p] for p in positions]
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError as exc:
        logger.debug("batched JPEG decode on %s failed (%s); decoding one by one", device, first_line(exc))
    return [_decode_one(one, device) for one in data]


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    for where in dict.fromkeys([device, torch.device("cpu")]):
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=where).to(device)
        except RuntimeError:
            continue
    return None


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [3, h, w] -> uint8 [3, height, width] as the CPU letterbox resizes: area averaging when
    shrinking (OpenCV's INTER_AREA, as two matrix products), bilinear when enlarging."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    if height > image.shape[-2] or width > image.shape[-1]:
        resized = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    else:  # torch's "area" mode pools whole pixels; OpenCV weighs the pixels a window only partly covers
        rows = _area_weights(image.shape[-2], height, image.device)
        columns = _area_weights(image.shape[-1], width, image.device)
        resized = rows @ image.float() @ columns.T
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _area_weights(size: int, new_size: int, device: torch.device) -> torch.Tensor:
    """[new_size, size]: each output pixel's share of every input pixel it covers (rows sum to 1)."""
    step = size / new_size
    starts = torch.arange(new_size, device=device, dtype=torch.float64)[:, None] * step
    pixels = torch.arange(size, device=device, dtype=torch.float64)[None]
    overlap = (torch.minimum(pixels + 1, starts + step) - torch.maximum(pixels, starts)).clamp_(min=0)
    return (overlap / step).float()


def _unlabel(batch: Batch, position: int, problems: LoadProblems | None, detail: str) -> None:
    """Sample ``position`` of ``batch`` becomes labelled for nothing; reported once per file."""
    meta = batch.meta[position]
    if problems is not None:
        problems.report(meta["index"], kinds.UNREADABLE_IMAGE, meta["path"], detail)
    else:
        logger.warning("%s: %s (%s): %s", meta["path"], kinds.UNREADABLE_IMAGE, kinds.ACTIONS[kinds.UNREADABLE_IMAGE],
                       detail)
    for task, target in batch.targets.items():
        target["valid"][position] = False
        if task == "detection":
            target["labels"][position] = -1
            target["boxes"][position] = 0
        elif task == "segmentation":
            target["mask"][position] = IGNORE_INDEX
        elif target["labels"].dtype == torch.int64:  # single-label classification; multi-hot rows just go invalid
            target["labels"][position] = -1
