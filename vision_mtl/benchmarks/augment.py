"""The two augmentation backends side by side: the kornia pipeline on the batch against albumentations
per image (then collated and finished on the device), same recipe, same letterboxed samples in memory.
Decoding is in neither: both start from the uint8 samples the workers would hand over."""

from __future__ import annotations

import dataclasses
import itertools
import statistics

import numpy as np

from vision_mtl.config import TASKS, AugmentConfig
from vision_mtl.benchmarks.model import interleaved_timings
from vision_mtl.data.augment_albu import AlbumentationsAugment
from vision_mtl.data.device_augment import DeviceAugment
from vision_mtl.data.sample import Sample, collate


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
