"""CPU inference precision (issue 14): the INT8 ONNX export (static QDQ quantisation of the network,
NMS/top-k/argmax left in float32) against the float32 graph, and bf16 autocast for checkpoints,
chosen by what the CPU computes natively."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import SHAPES_CLASSES, one_line, run_tool
from test_export import tiny
from vision_mtl.config import TASKS, config_from_dict
from vision_mtl.data.loader import build_data
from vision_mtl.engine.runners import OnnxRunner, TorchRunner
from vision_mtl.export.onnx import export_checkpoint
from vision_mtl.errors import ConfigError
from vision_mtl.export.quantize import calibration_batches, compare_int8
from vision_mtl.inference.predictor import Predictor
from vision_mtl.utils import runtime
from vision_mtl.utils.runtime import cpu_has_bf16, resolve_precision

# What the int8 graph must keep of the float32 one on the 8 val images (tiny trained model). The
# detections compared are those scoring >= DET_CONF in float32 (what a user keeps with --conf).
DET_CONF, DET_IOU, DET_MATCHED = 0.05, 0.9, 0.9
SEG_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> dict[str, Path]:
    """The trained tiny model exported twice: float32 from Python, int8 through the tool."""
    folder = tmp_path_factory.mktemp("int8")
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    export_checkpoint(trained_run / "best.pt", fp32)
    proc = run_tool("export_onnx.py", "--weights", str(trained_run / "best.pt"), "--out", str(int8), "--int8",
                    "--calib-images", "8")
    assert proc.returncode == 0, proc.stderr
    return {"fp32": fp32, "int8": int8, "log": proc.stderr}


def val_batches(weights: Path) -> list[torch.Tensor]:
    """The 8 val images of the model's own config, letterboxed by the loader."""
    runner = OnnxRunner(weights)
    cfg = config_from_dict(runner.info.config)
    return [batch.images for batch in build_data(cfg, classes=runner.info.classes, train=False).val]


def test_int8_export_quantises_the_network_and_keeps_postprocessing_in_float(exported):
    graph = onnx.load(str(exported["int8"])).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("DequantizeLinear") > 0 and ops.count("QuantizeLinear") > 0
    produced_by = {out: node for node in graph.node for out in node.output}
    int8_weights = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    for conv in convs:  # every convolution's weights int8, one scale per output channel
        dequantize = produced_by[conv.input[1]]
        weight = int8_weights[dequantize.input[0]]
        scales = next(t for t in graph.initializer if t.name == dequantize.input[1])
        assert scales.dims == [weight.dims[0]]
    assert max(int8_weights[produced_by[c.input[1]].input[0]].dims[0] for c in convs) > 1
    produced_by = {out: node.op_type for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type in ("NonMaxSuppression", "TopK", "ArgMax"):
            assert all(produced_by.get(i) != "DequantizeLinear" for i in node.input), node.op_type
    assert {"NonMaxSuppression", "TopK", "ArgMax"} <= set(ops)
    meta = {p.key: p.value for p in onnx.load(str(exported["int8"])).metadata_props}
    assert meta["precision"] == "int8"
    assert {p.key: p.value for p in onnx.load(str(exported["fp32"])).metadata_props}["precision"] == "float32"
    assert "det_matched" in exported["log"] and "seg_agreement" in exported["log"]


def test_int8_graph_answers_like_the_float32_graph(exported):
    report = compare_int8(exported["fp32"], exported["int8"], val_batches(exported["fp32"]), iou=DET_IOU,
                          conf=DET_CONF)
    assert report["det_compared"] >= 50 and report["det_matched"] >= DET_MATCHED
    assert report["seg_agreement"] >= SEG_AGREEMENT
    assert report["cls_scores"] <= 0.05


def test_runners_load_the_int8_graph(exported):
    runner = OnnxRunner(exported["int8"])
    assert runner.precision == "int8" and runner.info.classes == OnnxRunner(exported["fp32"]).info.classes
    results = Predictor(exported["int8"], conf=0.0).predict(np.zeros((48, 80, 3), np.uint8))
    assert results[0].mask.shape == (48, 80) and results[0].boxes.shape[1] == 4
    with pytest.raises(ConfigError, match="set at export") as info:  # a graph's precision is fixed
        Predictor(exported["int8"], precision="bf16")
    assert one_line(str(info.value))


def test_calibration_images_come_from_a_folder_or_the_val_split(make_config, shapes_root):
    cfg = make_config()
    from_folder = calibration_batches(cfg, SHAPES_CLASSES, shapes_root / "val" / "images", 5)
    from_val = calibration_batches(cfg, SHAPES_CLASSES, None, 3)
    for batches, count in ((from_folder, 5), (from_val, 3)):
        images = torch.cat(batches)
        assert images.shape == (count, 3, 64, 64) and images.dtype == torch.uint8
    loader_first = next(iter(build_data(cfg, classes=SHAPES_CLASSES, train=False).val)).images[:3]
    assert torch.equal(torch.cat(from_val), loader_first)  # letterboxed as evaluation sees them


@pytest.mark.parametrize("args, expected", [
    (["--calib-images", "4"], "--calib and --calib-images only apply with --int8"),
    (["--int8", "--half"], "--int8 and --half exclude each other"),
    (["--int8", "--calib", "EMPTY"], "holds no images"),
])
def test_int8_user_mistakes_are_one_line(args, expected, trained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    proc = run_tool("export_onnx.py", "--weights", str(trained_run / "best.pt"), "--out", str(tmp_path / "m.onnx"),
                    *args)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert one_line(proc.stderr) and not (tmp_path / "m.onnx").exists()


# ----------------------------------------------------------------------------------------- bf16

@pytest.mark.parametrize("flags, native", [("fpu sse avx2 avx512f", False), ("fpu avx512f avx512_bf16", True),
                                           ("fpu amx_tile amx_bf16", True)])
def test_cpu_has_bf16_reads_the_cpu_flags(flags, native, monkeypatch):
    monkeypatch.setattr(runtime.Path, "read_text", lambda self: f"processor : 0\nflags : {flags}\n")
    assert cpu_has_bf16() is native


def test_bf16_falls_back_to_fp32_where_the_cpu_lacks_it(trained_run, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == resolve_precision("bf16", cpu) == "fp32"
    assert Predictor(trained_run / "best.pt", precision="auto").runner.precision == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert Predictor(trained_run / "best.pt", precision="auto").runner.precision == "bf16"
    assert Predictor(trained_run / "best.pt", precision="fp32").runner.precision == "fp32"


def test_bf16_answers_close_to_fp32(make_config):
    """bf16 keeps 8 bits of mantissa: probabilities move by up to ~1e-2, masks may flip where two
    classes are near-tied, and the rest of the pipeline (NMS, argmax) sees float32."""
    model, info = tiny(make_config, TASKS)
    images = next(iter(build_data(make_config(), classes=SHAPES_CLASSES, train=False).val)).images
    fp32 = TorchRunner(model, info, torch.device("cpu"))(images)
    bf16 = TorchRunner(model, info, torch.device("cpu"), precision="bf16")(images)
    scores = bf16["classification"]["scores"]
    assert scores.dtype == torch.float32 and bf16["detection"]["scores"].dtype == torch.float32
    difference = float((scores - fp32["classification"]["scores"]).abs().max())
    assert 0 < difference <= 2e-2  # > 0: the network did run in bf16
    assert (bf16["segmentation"]["mask"] == fp32["segmentation"]["mask"]).float().mean() >= 0.95


def test_evaluate_measures_a_checkpoint_in_bf16(trained_run, monkeypatch, capsys):
    """`tools/evaluate.py --precision bf16`: the val split is scored by the bf16 runner (where native)."""
    import vision_mtl.evaluation.saved as saved
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    used = []
    real = saved.load_runner

    def spy(*args, **kwargs):
        runner, cfg = real(*args, **kwargs)
        used.append(runner.precision)
        return runner, cfg

    monkeypatch.setattr(saved, "load_runner", spy)
    fp32 = saved.evaluate_weights(trained_run / "best.pt", progress=False).metrics
    bf16 = saved.evaluate_weights(trained_run / "best.pt", progress=False, precision="bf16").metrics
    assert used == ["fp32", "bf16"]
    assert bf16.keys() == fp32.keys()
    assert abs(bf16["classification/top1"] - fp32["classification/top1"]) <= 0.1


def test_onnx_runner_input_is_to_float_bit_for_bit(exported):
    """The runner's reused input array holds exactly ``to_float``'s values, for each batch shape in turn."""
    from vision_mtl.data.sample import to_float
    runner = OnnxRunner(exported["fp32"])
    for count in (3, 1, 3):
        images = torch.randint(0, 256, (count, 3, 20, 24), dtype=torch.uint8)
        got = runner._graph_input(images)
        assert got.dtype == np.float32 and np.array_equal(got, to_float(images).numpy())
