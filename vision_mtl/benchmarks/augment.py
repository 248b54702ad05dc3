"""The two augmentation backends side by side: the kornia pipeline on the batch against albumentations
per image (then collated and finished on the device), same recipe. :func:`benchmark_augment` starts both
from the same letterboxed samples in memory (no decoding); :func:`benchmark_decode` starts both from a
training split's files, so JPEG decoding on the device (``data.decode=device``) meets decoding in the workers."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections.abc import Callable

import numpy as np
import torch

from vision_mtl.config import TASKS, AugmentConfig, Config
from vision_mtl.utils.timing import interleaved_timings
from vision_mtl.data.augment.albu import AlbumentationsAugment
from vision_mtl.data.augment.device import DeviceAugment
from vision_mtl.data.augment.decode import decode_pending
from vision_mtl.data.loader import build_data
from vision_mtl.data.sample import Sample, collate

DEVICE_DECODE, ALBUMENTATIONS = "device decode + augmentation", "albumentations"


def benchmark_augment(cfg: AugmentConfig, image_size: int, batch_size: int, rounds: int) -> dict[str, float]:
    """Images/s of each backend on the CPU (mosaic and mixup on the device in both), medians over
    ``rounds`` interleaved rounds, and the median per-round ratio device / albumentations."""
    samples = synthetic_samples(batch_size, image_size)
    device = DeviceAugment(dataclasses.replace(cfg, backend="device"))
    finish = DeviceAugment(dataclasses.replace(cfg, backend="albumentations"))
    per_image, seeds = AlbumentationsAugment(cfg, image_size), itertools.count()
    candidates = {
        "device": lambda: device(collate(samples, list(TASKS))),
        "albumentations": lambda: finish(collate([per_image(s, next(seeds)) for s in samples], list(TASKS))),
    }
    times = interleaved_timings(candidates, rounds)
    result = {f"{name} images/s": batch_size / statistics.median(ts) for name, ts in times.items()}
    result["ratio device / albumentations"] = statistics.median(
        a / d for d, a in zip(times["device"], times["albumentations"]))
    return result


def benchmark_decode(cfg: Config, rounds: int, device: torch.device) -> dict[str, float]:
    """Images/s from ``cfg``'s training files to augmented batches on ``device``, one epoch per call:
    the training loader handing JPEG bytes to ``decode_pending`` and the kornia pipeline, against the
    loader whose workers decode and augment with albumentations (DeviceAugment finishing). Same workers,
    images, size and recipe; medians over ``rounds`` interleaved rounds, and the median per-round ratio."""
    epochs = {DEVICE_DECODE: _training_epoch(cfg, device, decode="device", backend="device"),
              ALBUMENTATIONS: _training_epoch(cfg, device, decode="cpu", backend="albumentations")}
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    images = epochs[DEVICE_DECODE]()  # also starts that loader's workers; the warm-up round starts the other's
    times = interleaved_timings(epochs, rounds, warmup=1, sync=sync)
    result = {"images per round": images}
    result.update({f"{name} images/s": images / statistics.median(ts) for name, ts in times.items()})
    result[f"ratio device decode / {ALBUMENTATIONS}"] = statistics.median(
        a / d for d, a in zip(times[DEVICE_DECODE], times[ALBUMENTATIONS]))
    return result


def _training_epoch(cfg: Config, device: torch.device, decode: str, backend: str) -> Callable[[], int]:
    """One pass over the training loader of ``cfg`` with ``data.decode`` and the augmentation backend set,
    each batch decoded (where deferred) and augmented on ``device`` as the trainer does; returns the image count."""
    augment_cfg = dataclasses.replace(cfg.train.augment, backend=backend)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, decode=decode),
                              train=dataclasses.replace(cfg.train, device=str(device), augment=augment_cfg))
    loader, augment = build_data(cfg).train, DeviceAugment(augment_cfg, device)
    problems = loader.dataset.load_problems

    def epoch() -> int:
        count = 0
        for batch in loader:
            count += len(augment(decode_pending(batch.to(device), problems)))
        return count

    return epoch


def synthetic_samples(count: int, size: int) -> list[Sample]:
    """Letterboxed-looking samples: noise images, 3-6 coloured rectangles each (boxes, mask), a label."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        image = rng.integers(0, 256, (size, size, 3), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        boxes = []
        for j in range(int(rng.integers(3, 7))):
            x1, y1 = rng.integers(0, size * 3 // 4, 2)
            w, h = rng.integers(size // 16, size // 4, 2)
            image[y1:y1 + h, x1:x1 + w] = rng.integers(0, 256, 3)
            mask[y1:y1 + h, x1:x1 + w] = j % 4 + 1
            boxes.append([x1, y1, min(x1 + w, size), min(y1 + h, size)])
        samples.append(Sample(image, boxes=np.array(boxes, np.float32), labels=np.arange(len(boxes)) % 4,
                              mask=mask, label=i % 4))
    return samples
