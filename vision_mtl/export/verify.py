"""Checking an exported graph against PyTorch: the same images through both, every output compared.

Scores and logits are compared within an absolute tolerance. Discrete outputs are compared as
what they mean: detections as sets (same class, box and score within tolerance, order free, since
tied scores may sort either way), masks by the fraction of pixels that differ (an argmax between
two near-equal logits may flip).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vision_mtl.data.sample import to_float
from vision_mtl.data.image_io import list_images
from vision_mtl.engine.export_wrapper import ExportWrapper
from vision_mtl.engine.preprocess import read_images
from vision_mtl.errors import ExportError

DETECTION_OUTPUTS = ("det_boxes", "det_scores", "det_labels", "det_num")


@dataclass(frozen=True)
class Tolerance:
    """``atol``: scores, probabilities, logits. ``box_atol``: box corners in pixels. ``mismatch``:
    the fraction of mask pixels, and of detections, allowed to differ."""

    atol: float
    box_atol: float
    mismatch: float


FLOAT32 = Tolerance(atol=1e-4, box_atol=1e-2, mismatch=1e-3)
FLOAT16 = Tolerance(atol=1e-2, box_atol=1.0, mismatch=2e-2)


def verify_onnx(path: str | Path, wrapper: ExportWrapper, batches: list[torch.Tensor],
                tolerance: Tolerance) -> dict[str, float]:
    """Run each uint8 [B, 3, H, W] batch through the graph (onnxruntime, CPU) and ``wrapper``.
    Returns the largest difference per output over all batches (``det_unmatched``: the fraction of
    detections without a counterpart); raises :class:`ExportError` naming the first output out of
    tolerance."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
    names = wrapper.output_names
    report: dict[str, float] = {}
    for images in batches:
        x = to_float(images)
        with torch.inference_mode():
            expected = dict(zip(names, (t.numpy() for t in wrapper(x))))
        actual = dict(zip(names, session.run(names, {graph_input.name: x.numpy().astype(dtype)})))
        for name, value in compare_outputs(expected, actual, tolerance, f"batch of {len(images)} at "
                                           f"{images.shape[-2]}x{images.shape[-1]}").items():
            report[name] = max(report.get(name, 0.0), value)
    return report


def compare_outputs(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], tolerance: Tolerance,
                    where: str = "") -> dict[str, float]:
    """Differences per output name (see :func:`verify_onnx`)."""
    for name, value in expected.items():
        if actual[name].shape != value.shape:
            raise ExportError(f"ONNX output {name} has shape {list(actual[name].shape)}, PyTorch "
                              f"{list(value.shape)} ({where})")
    report: dict[str, float] = {}
    for name, value in expected.items():
        if name in DETECTION_OUTPUTS:
            continue
        if name == "seg_mask":
            report[name] = float(np.mean(actual[name] != value))
            limit = tolerance.mismatch
        else:
            report[name] = float(np.abs(actual[name].astype(np.float64) - value).max(initial=0.0))
            limit = tolerance.box_atol if name == "det_candidate_boxes" else tolerance.atol
        if report[name] > limit:
            raise ExportError(f"ONNX output {name} differs from PyTorch by {report[name]:.3g} "
                              f"(tolerance {limit:g}, {where})")
    if "det_num" in expected:
        report.update(_compare_detections(expected, actual, tolerance, where))
    return report


def _compare_detections(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], tolerance: Tolerance,
                        where: str) -> dict[str, float]:
    """Match each PyTorch detection to an unused ONNX one of the same class with score and box
    within tolerance; what stays unmatched on either side counts as a mismatch."""
    unmatched = total = 0
    score_diff = box_diff = 0.0
    for b in range(len(expected["det_num"])):
        e = {k: expected[k][b, : int(expected["det_num"][b])] for k in DETECTION_OUTPUTS[:3]}
        a = {k: actual[k][b, : int(actual["det_num"][b])] for k in DETECTION_OUTPUTS[:3]}
        used = np.zeros(len(a["det_scores"]), dtype=bool)
        for box, score, label in zip(e["det_boxes"], e["det_scores"], e["det_labels"]):
            d_score = np.abs(a["det_scores"] - score)
            d_box = np.abs(a["det_boxes"] - box).max(axis=1, initial=0.0)
            ok = ~used & (a["det_labels"] == label) & (d_score <= tolerance.atol) & (d_box <= tolerance.box_atol)
            if ok.any():
                j = int(np.flatnonzero(ok)[np.argmin(d_box[ok])])
                used[j] = True
                score_diff, box_diff = max(score_diff, float(d_score[j])), max(box_diff, float(d_box[j]))
            else:
                unmatched += 1
        unmatched += int((~used).sum())
        total += len(e["det_scores"]) + len(a["det_scores"])
    fraction = unmatched / max(1, total)
    if fraction > tolerance.mismatch:
        raise ExportError(f"ONNX detections differ from PyTorch: {unmatched} of {total} unmatched (same class, "
                          f"score within {tolerance.atol:g}, box within {tolerance.box_atol:g} px; {where})")
    return {"det_scores": score_diff, "det_boxes": box_diff, "det_unmatched": fraction}


def sample_batches(size: int, folder: str | Path | None = None, dynamic: bool = False) -> list[torch.Tensor]:
    """What to compare on: a batch of 1 and a batch of 3 (one graph, two batch sizes), from the
    first images of ``folder`` when given, else generated; with ``dynamic`` also one image of
    another size."""
    if folder is not None:
        paths = list_images(folder)[:3]
        if not paths:
            raise ExportError(f"no images in '{folder}' to check the export on")
        images = read_images(paths, size).images
    else:
        images = _generated(3, size, size)
    batches = [images[:1], images]
    if dynamic:
        batches.append(_generated(1, size + 64, size + 32))
    return batches


def _generated(count: int, height: int, width: int) -> torch.Tensor:
    """Smooth random colour fields with fine noise: structure at many scales, fixed seed."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 3, height // 16 + 1, width // 16 + 1, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noisy = smooth + 0.1 * torch.rand(count, 3, height, width, generator=generator)
    return (noisy.clamp(0, 1) * 255).to(torch.uint8)
