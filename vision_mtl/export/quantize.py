"""INT8 ONNX: onnxruntime static quantisation (QDQ, per-channel 7-bit weights) of an exported float32
graph, calibrated on letterboxed images, and the report of how far it moved from that graph.

The weights keep 7 bits (``reduce_range``) so the graph answers the same on every x86 CPU: without
VNNI, onnxruntime's u8 x s8 kernels (AVX2 ``vpmaddubsw``) add two u8 x s8 products into a
saturating int16; with weights in [-64, 64] that sum stays within 2 * 255 * 64 = 32640 <= 32767,
while full 8-bit weights reach 2 * 255 * 127 = 64770 and can saturate (issue 19: an AVX2-only EPYC
found 0.374 of the float32 detections again with full-range weights). On this project's VNNI CPU
7-bit weights cost no time and agreed with float32 about as well as 8-bit ones (docs/benchmarks.md),
so no full-range variant is offered.

Only the network's matrix ops (:data:`QUANTIZED_OPS`) are quantised: NMS, top-k, the box decoding
and the segmentation argmax keep their float32 inputs, so they select exactly as in the float
graph given the network's (int8) outputs. Quantisation moves scores by design, so the int8 graph
is not held to the float tolerances: its differences are measured and reported instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torchvision.ops import box_iou

from vision_mtl.config import Config
from vision_mtl.data.sample import to_float
from vision_mtl.data.image_io import list_images
from vision_mtl.data.loader import build_data
from vision_mtl.engine.preprocess import collate_prepared, read_prepared
from vision_mtl.engine.runners import INT8_KEY, PORTABLE_INT8
from vision_mtl.errors import DataError, ExportError, first_line
from vision_mtl.evaluation.saved import evaluate_weights

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
CALIBRATION_BATCH = 8


class ImageCalibration(CalibrationDataReader):
    """Feeds uint8 [B, 3, H, W] letterboxed batches to the calibrator as the graph's float input."""

    def __init__(self, batches: list[torch.Tensor], input_name: str = "images"):
        self._feeds: Iterator[dict[str, np.ndarray]] = ({input_name: to_float(b).numpy()} for b in batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_batches(cfg: Config, classes: dict[str, list[str]], folder: str | Path | None,
                        count: int) -> list[torch.Tensor]:
    """``count`` letterboxed images (fewer if there are fewer) from ``folder``, else from the val
    split of ``cfg``, in uint8 batches; prepared as the loaders and the export check prepare them.
    An unreadable file in ``folder`` is skipped with a warning (the next image takes its place)."""
    size = cfg.data.image_size
    if folder is not None:
        samples = []
        for path in list_images(folder):
            if len(samples) == count:
                break
            try:
                samples.append(read_prepared(path, size, {"path": str(path)}))
            except DataError as exc:
                logger.warning("calibration image skipped: %s", exc)
        if not samples:
            raise ExportError(f"--calib '{folder}' holds no readable images; give a folder of images to calibrate on")
        return list(collate_prepared(samples).images.split(CALIBRATION_BATCH))
    batches, taken = [], 0
    for batch in build_data(cfg, classes=classes, train=False).val:
        batches.append(batch.images[: count - taken])
        taken += len(batches[-1])
        if taken >= count:
            break
    if not taken:
        raise ExportError("the val split has no images to calibrate on; give a folder with --calib DIR")
    return batches


def quantize_int8(fp32: str | Path, out: str | Path, batches: list[torch.Tensor]) -> Path:
    """Write ``fp32``'s graph quantised to int8 (QDQ, per-channel 7-bit int8 weights, uint8
    activations, MinMax calibration on ``batches``) to ``out``; the metadata is kept, ``precision``
    says ``int8`` and ``vision_mtl.int8`` the portable weight range. uint8 x int8 is onnxruntime's
    fast CPU path: int8 activations ran 0.87x float32, uint8 0.5x; uint8 weights (U8U8, the other
    portable choice) 0.75-1.13x where 7-bit int8 weights ran 0.42-0.84x (docs/benchmarks.md)."""
    out = Path(out)
    quant_log = logging.getLogger()  # the quantiser warns on the root logger about biases and pre-processing
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        quantize_static(str(fp32), str(out), ImageCalibration(batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, op_types_to_quantize=QUANTIZED_OPS,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    except Exception as exc:  # onnxruntime raises many types; the first line names the failing node
        raise ExportError(f"int8 quantisation failed: {first_line(exc)}") from exc
    finally:
        quant_log.setLevel(level)
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props if p.key != "onnx.infer"}
    props["precision"] = "int8"
    props[INT8_KEY] = PORTABLE_INT8
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))
    return out


def compare_int8(fp32: str | Path, int8: str | Path, batches: list[torch.Tensor], iou: float = 0.5,
                 conf: float = 0.0) -> dict[str, float]:
    """How the int8 graph answers against the float32 one on ``batches`` (uint8 images):
    ``det_matched``: the fraction of float32 detections scoring at least ``conf`` that the int8
    graph finds too (same class, IoU >= ``iou``), ``det_compared`` their number; ``det_scores``: the largest score change of a
    matched pair; ``seg_agreement``: the fraction of mask pixels with the same class; every other
    output: its largest absolute difference."""
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    names = [o.name for o in sessions[0].get_outputs()]
    diffs: dict[str, float] = {}
    matched = total = same_pixels = pixels = 0
    for images in batches:
        feed = {sessions[0].get_inputs()[0].name: to_float(images).numpy()}
        ref, got = (dict(zip(names, s.run(names, feed))) for s in sessions)
        for name in names:
            if name == "seg_mask":
                same_pixels += int((ref[name] == got[name]).sum())
                pixels += ref[name].size
            elif name == "det_num":
                m, t, worst = _match_detections(ref, got, iou, conf)
                matched, total = matched + m, total + t
                diffs["det_scores"] = max(diffs.get("det_scores", 0.0), worst)
            elif name not in ("det_boxes", "det_scores", "det_labels"):
                diffs[name] = max(diffs.get(name, 0.0), float(np.abs(ref[name].astype(np.float64) - got[name]).max()))
    if "det_num" in names:
        diffs["det_compared"] = total
        diffs["det_matched"] = matched / total if total else 1.0
    if "seg_mask" in names:
        diffs["seg_agreement"] = same_pixels / pixels
    return diffs


def val_accuracy_change(fp32: str | Path, int8: str | Path) -> dict[str, float]:
    """``val <task/metric> change``: the int8 graph's metric minus the float32 graph's on the val
    split of the model's config (each what tools/evaluate.py reports for that file); nothing, with a
    warning, when the val split cannot be read here."""
    try:
        base, quantised = (evaluate_weights(path, progress=False).metrics for path in (fp32, int8))
    except DataError as exc:
        logger.warning("int8 accuracy on the val split not measured: %s", exc)
        return {}
    return {f"val {name} change": quantised[name] - value for name, value in base.items()}


def _match_detections(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], iou: float,
                      conf: float) -> tuple[int, int, float]:
    """Greedily, best reference detection first, pair each with the unused int8 detection of its
    class that overlaps it most (IoU >= ``iou``). Returns (matched, reference count, largest score change)."""
    matched = total = 0
    worst = 0.0
    for b in range(len(ref["det_num"])):
        n_ref, n_got = int(ref["det_num"][b]), int(got["det_num"][b])
        keep = ref["det_scores"][b, :n_ref] >= conf
        r_boxes, r_scores, r_labels = (ref[k][b, :n_ref][keep] for k in ("det_boxes", "det_scores", "det_labels"))
        g_boxes, g_scores, g_labels = (got[k][b, :n_got] for k in ("det_boxes", "det_scores", "det_labels"))
        overlap = box_iou(torch.from_numpy(r_boxes), torch.from_numpy(g_boxes)).numpy()
        overlap[r_labels[:, None] != g_labels[None, :]] = 0.0
        used = np.zeros(n_got, dtype=bool)
        for i in range(len(r_scores)):
            candidates = np.where(used, 0.0, overlap[i])
            j = int(np.argmax(candidates)) if n_got else -1
            if j >= 0 and candidates[j] >= iou:
                used[j] = True
                matched += 1
                worst = max(worst, abs(float(r_scores[i]) - float(g_scores[j])))
        total += len(r_scores)
    return matched, total, worst
