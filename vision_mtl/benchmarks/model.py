"""The multi-task model against single-task models and its exports, timed side by side."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

from vision_mtl.config import TASKS, Config
from vision_mtl.export.onnx import export_onnx
from vision_mtl.engine.export_wrapper import ExportWrapper
from vision_mtl.engine.model_info import ModelInfo
from vision_mtl.engine.runners import TorchRunner
from vision_mtl.models import MultiTaskModel, build_model
from vision_mtl.utils.timing import interleaved_timings

RANDOM_CLASSES = {"classification": ["c"] * 4, "detection": ["d"] * 4, "segmentation": ["s"] * 5}


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


def benchmark_onnx_files(paths: list[Path], image_size: int, batch_sizes: list[int],
                         rounds: int) -> list[dict[str, float]]:
    """Exported graphs (e.g. float32 and int8 of one model) in onnxruntime CPU sessions on the same
    random images, per batch size: median ms of each file and the median per-round ratio of each to
    the first."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see benchmark_export
    sessions = {str(p): ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths}
    rows = []
    for batch in batch_sizes:
        feed = {"images": torch.rand(batch, 3, image_size, image_size).numpy()}
        times = interleaved_timings({name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()}, rounds)
        first = times[str(paths[0])]
        rows.append({"batch": batch, **{f"{name} ms": 1000 * statistics.median(t) for name, t in times.items()},
                     **{f"ratio {name} / first": statistics.median(a / b for a, b in zip(t, first))
                        for name, t in list(times.items())[1:]}})
    return rows


def benchmark_precision(fp32: TorchRunner, bf16: TorchRunner, batch_sizes: list[int],
                        rounds: int) -> list[dict[str, float]]:
    """One checkpoint's runner in float32 and under bf16 autocast (postprocessing included) on the
    same random uint8 images, per batch size: medians in ms and the median per-round ratio bf16 / fp32."""
    size = fp32.info.image_size
    rows = []
    for batch in batch_sizes:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        times = interleaved_timings({"fp32": lambda: fp32(images), "bf16": lambda: bf16(images)}, rounds)
        rows.append({"batch": batch, "fp32 ms": 1000 * statistics.median(times["fp32"]),
                     "bf16 ms": 1000 * statistics.median(times["bf16"]),
                     "ratio bf16 / fp32": statistics.median(b / f for f, b in zip(times["fp32"], times["bf16"]))})
    return rows
