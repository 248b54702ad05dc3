"""Side-by-side timing: candidates run interleaved in one process, so machine noise hits all alike."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from vision_mtl.config import TASKS, Config
from vision_mtl.models import build_model


def interleaved_timings(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
                        sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each candidate; every round runs all candidates, in a rotating order."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync()
            start = time.perf_counter()
            candidates[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def benchmark_model(cfg: Config, image_size: int, batch_size: int, rounds: int,
                    device: torch.device) -> dict[str, float]:
    """Forward time of the multi-task model vs the three single-task models (same backbone and neck
    settings) run one after the other. Returns medians in ms and the ratio multi / sum-of-singles."""
    classes = {"classification": ["c"] * 4, "detection": ["d"] * 4, "segmentation": ["s"] * 5}
    models = {"multi-task": build_model(dataclasses.replace(cfg.model, tasks=list(TASKS)), classes)}
    for task in TASKS:
        models[task] = build_model(dataclasses.replace(cfg.model, tasks=[task]), classes)
    images = torch.rand(batch_size, 3, image_size, image_size, device=device)
    candidates = {}
    for name, model in models.items():
        model.to(device).eval()
        candidates[name] = _forward(model, images)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = interleaved_timings(candidates, rounds, sync=sync)
    singles_per_round = [sum(times[t][r] for t in TASKS) for r in range(rounds)]
    result = {f"{name} ms": 1000 * statistics.median(ts) for name, ts in times.items()}
    result["three single-task ms"] = 1000 * statistics.median(singles_per_round)
    result["ratio multi / three single"] = statistics.median(
        m / s for m, s in zip(times["multi-task"], singles_per_round))
    return result


def _forward(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(images)
    return run
