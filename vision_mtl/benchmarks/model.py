"""Side-by-side timing: candidates run interleaved in one process, so machine noise hits all alike."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

from vision_mtl.config import TASKS, Config
from vision_mtl.export.onnx import export_onnx
from vision_mtl.engine.export_wrapper import ExportWrapper
from vision_mtl.engine.model_info import ModelInfo
from vision_mtl.models import MultiTaskModel, build_model

RANDOM_CLASSES = {"classification": ["c"] * 4, "detection": ["d"] * 4, "segmentation": ["s"] * 5}


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
    models = {"multi-task": build_model(dataclasses.replace(cfg.model, tasks=list(TASKS)), RANDOM_CLASSES)}
    for task in TASKS:
        models[task] = build_model(dataclasses.replace(cfg.model, tasks=[task]), RANDOM_CLASSES)
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


def random_model(cfg: Config) -> tuple[MultiTaskModel, ModelInfo]:
    """The model of ``cfg`` with random weights and made-up classes, for timing only."""
    model = build_model(cfg.model, RANDOM_CLASSES)
    return model, ModelInfo.of(model, cfg, RANDOM_CLASSES)


def benchmark_export(model: MultiTaskModel, info: ModelInfo, batch_sizes: list[int], rounds: int,
                     exporter: str = "dynamo") -> list[dict[str, float]]:
    """The whole exported computation (network, NMS, argmax) in an onnxruntime CPU session against
    PyTorch eager on the same images, per batch size: medians in ms and the median per-round ratio
    onnxruntime / torch. Both run on the CPU with torch's thread count."""
    wrapper = ExportWrapper(model.cpu())
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # no busy-waiting after a run: spinning threads would steal the CPU from the torch call timed next
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(wrapper, info, Path(tmp) / "model.onnx", exporter=exporter)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = []
    for batch in batch_sizes:
        images = torch.rand(batch, 3, info.image_size, info.image_size)
        feed = {"images": images.numpy()}
        times = interleaved_timings({"torch": _forward(wrapper, images), "onnxruntime": lambda: session.run(None, feed)},
                                    rounds)
        rows.append({"batch": batch, "torch ms": 1000 * statistics.median(times["torch"]),
                     "onnxruntime ms": 1000 * statistics.median(times["onnxruntime"]),
                     "ratio onnxruntime / torch": statistics.median(
                         o / t for o, t in zip(times["onnxruntime"], times["torch"]))})
    return rows


def _forward(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(images)
    return run
