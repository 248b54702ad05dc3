"""ONNX export of the whole multi-task model: one graph, every head, named outputs, self-describing.

Input ``images``: float32 (float16 with ``half``) RGB in [0, 1], [B, 3, H, W], letterboxed to the
model's size (normalisation happens inside the graph). The batch is always dynamic; ``dynamic``
frees height and width too (multiples of 32). The outputs are named and documented in
:data:`OUTPUTS`; the same text goes into the file's metadata (``outputs``) and doc string.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import nn

from vision_mtl.engine.export_wrapper import OUTPUTS, ExportWrapper
from vision_mtl.engine.model_info import ModelInfo
from vision_mtl.engine.runners import load_torch_runner
from vision_mtl.export.nms_onnx import dynamo_translations, register_torchscript_symbolic
from vision_mtl.export.quantize import calibration_batches, compare_int8, quantize_int8, val_accuracy_change
from vision_mtl.export.verify import FLOAT16, FLOAT32, sample_batches, verify_onnx
from vision_mtl.errors import CheckpointError, ConfigError, ExportError, first_line
from vision_mtl.models import MultiTaskModel
from vision_mtl.utils.atomic import atomic_path
from vision_mtl.utils.outputs import check_out_file, writing

INPUT_DOC = "images: [B, 3, H, W] RGB in [0, 1] ({dtype}), letterboxed (scaled, padded bottom/right with 114/255)"
Exporter = Literal["dynamo", "torchscript"]


def export_checkpoint(weights: str | Path, out: str | Path, overrides: list[str] | tuple[str, ...] = (),
                      opset: int | None = None, dynamic: bool = False, half: bool = False, nms: bool = True,
                      seg_logits: bool = False, exporter: Exporter = "dynamo",
                      images: str | Path | None = None, overwrite: bool = False, int8: bool = False,
                      calib: str | Path | None = None, calib_images: int = 64) -> dict[str, float]:
    """Export a checkpoint's model, every head in one graph, to ``out``; check the graph; compare it
    with PyTorch on sample images (``images`` folder, else generated). Returns the largest
    difference per output; raises :class:`ExportError` when one is out of tolerance.

    ``int8``: the float32 graph, so checked, is then quantised (:mod:`~vision_mtl.export.quantize`)
    on ``calib_images`` images of the ``calib`` folder, else of the val split; the int8 graph is
    written, and the returned report is its difference from the float32 graph on the same sample
    images (:func:`~vision_mtl.export.quantize.compare_int8`) and the change of each val metric
    (:func:`~vision_mtl.export.quantize.val_accuracy_change`), not held to a tolerance.

    ``out`` appears only once the graph has passed both checks (written beside it, flushed to disk,
    then renamed), so a failed export leaves what was there. It is a ``.onnx`` file, never the
    checkpoint itself, and an existing file is replaced only with ``overwrite``."""
    out = Path(out)
    if Path(weights).suffix.lower() == ".onnx":
        raise CheckpointError(f"'{weights}' is already ONNX; export from the .pt checkpoint tools/train.py wrote")
    _check_out(weights, out, overwrite)
    if int8 and half:
        raise ConfigError("--int8 and --half exclude each other; choose one precision for the graph")
    runner, cfg = load_torch_runner(weights, overrides=overrides)
    wrapper = ExportWrapper(runner.model.cpu(), nms=nms, seg_logits=seg_logits)
    with writing(out.parent), atomic_path(out, fsync=True) as staged:
        batches = sample_batches(runner.info.image_size, images, dynamic)
        if not int8:
            export_onnx(wrapper, runner.info, staged, opset, dynamic, half, exporter)
            return verify_onnx(staged, wrapper, batches, FLOAT16 if half else FLOAT32)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
            fp32 = export_onnx(wrapper, runner.info, Path(scratch) / "fp32.onnx", opset, dynamic, False, exporter)
            verify_onnx(fp32, wrapper, batches, FLOAT32)
            quantised = quantize_int8(fp32, Path(scratch) / "int8.onnx",
                                      calibration_batches(cfg, runner.info.classes, calib, calib_images))
            report = {**compare_int8(fp32, quantised, batches), **val_accuracy_change(fp32, quantised)}
            os.replace(quantised, staged)  # measured under its .onnx name: the runners go by the suffix
            return report


def _check_out(weights: str | Path, out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an ``out`` that is the checkpoint itself, then what
    :func:`~vision_mtl.utils.outputs.check_out_file` refuses (the runners tell ONNX by its suffix)."""
    if out.exists() and Path(weights).exists() and os.path.samefile(out, weights):
        raise ConfigError(f"--out '{out}' is the checkpoint '{weights}' itself; choose another file for the ONNX model")
    check_out_file(out, ".onnx", overwrite, force="--force (overwrite=True from Python)")


def export_onnx(wrapper: ExportWrapper, info: ModelInfo, path: str | Path, opset: int | None = None,
                dynamic: bool = False, half: bool = False, exporter: Exporter = "dynamo") -> Path:
    """Write ``wrapper``'s graph to ``path`` with ``info`` in its metadata, then ``onnx.checker`` it."""
    path = Path(path)
    module = copy.deepcopy(wrapper).half() if half else wrapper
    size = _example_size(wrapper.model, info.image_size) if dynamic else info.image_size
    example = torch.rand(2, 3, size, size, dtype=torch.float16 if half else torch.float32)  # 2: batch 1 would be specialised
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter may put the weights in a separate '<name>.data' file; the graph is saved again
    # with them inside, so that scratch copy stays in a folder that goes away.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as scratch:
        raw = Path(scratch) / "model.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation chatter; the graph is verified instead
                if exporter == "dynamo":
                    _export_dynamo(module, example, raw, opset, dynamic)
                else:
                    _export_torchscript(module, example, raw, opset, dynamic)
        except Exception as exc:  # both exporters raise many types; the first line names the failing op
            raise ExportError(f"{exporter} export failed: {first_line(exc)}") from exc
        _save_with_metadata(raw, path, info, wrapper.output_names, "float16" if half else "float32")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejects '{path}': {first_line(exc)}") from exc
    return path


def _export_dynamo(module: nn.Module, example: torch.Tensor, path: Path, opset: int | None, dynamic: bool) -> None:
    shapes = {0: torch.export.Dim("batch", min=1, max=4096)}
    if dynamic:
        shapes[2] = 32 * torch.export.Dim("height_32", min=1, max=256)
        shapes[3] = 32 * torch.export.Dim("width_32", min=1, max=256)
    torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=["images"],
                      output_names=module.output_names, dynamic_shapes=(shapes,), opset_version=opset, verbose=False,
                      custom_translation_table=dynamo_translations())


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, opset: int | None,
                        dynamic: bool) -> None:
    register_torchscript_symbolic()
    spatial = {2: "height", 3: "width"} if dynamic else {}
    axes = {"images": {0: "batch", **spatial}}
    for name in module.output_names:
        axes[name] = {0: "batch"}
        if dynamic and name.startswith("seg_"):
            axes[name].update({1: "height", 2: "width"} if name == "seg_mask" else {2: "height", 3: "width"})
        if dynamic and name.startswith("det_candidate_"):
            axes[name][1] = "locations"
    torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["images"],
                      output_names=module.output_names, dynamic_axes=axes, opset_version=opset)


def _example_size(model: MultiTaskModel, image_size: int) -> int:
    """An example side at which no pyramid level is 1x1: the exporters specialise size-1 dims,
    which would break other sizes."""
    deepest = max(lv for head in model.heads.values() for lv in head.levels)
    return max(image_size, 2 * 2**deepest)


def _save_with_metadata(raw: Path, path: Path, info: ModelInfo, output_names: list[str], dtype: str) -> None:
    """The exported graph ``raw`` saved to ``path`` as one self-contained file, with ``info`` and the
    input/output documentation in its metadata."""
    model = onnx.load(str(raw))  # external weights, if any, are read in and saved inline below
    props = {**info.to_metadata(), "input": INPUT_DOC.format(dtype=dtype),
             "outputs": json.dumps({name: OUTPUTS[name][2] for name in output_names}), "precision": dtype}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = "vision_mtl multi-task model. " + INPUT_DOC.format(dtype=dtype) + ". Outputs: " + \
        "; ".join(f"{name} {OUTPUTS[name][2]}" for name in output_names)
    onnx.save(model, str(path))
