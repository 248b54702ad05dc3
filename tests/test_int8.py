"""CPU inference precision (issue 14): the INT8 ONNX export (static QDQ quantisation of the network,
NMS/top-k/argmax left in float32) against the float32 graph, and bf16 autocast for checkpoints,
chosen by what the CPU computes natively. Every test holds on any x86 CPU (issue 19): the int8
graph's 7-bit weights make its integer sums exact with or without VNNI, and the CPU-feature
branches are tested with the feature reader monkeypatched."""

from __future__ import annotations

from pathlib import Path

import logging

import numpy as np
import onnx
import pytest
import torch

from conftest import SHAPES_CLASSES, one_line, run_tool
from test_export import tiny
from vision_mtl.config import TASKS, config_from_dict
from vision_mtl.data.loader import build_data
from vision_mtl.engine.runners import INT8_KEY, PORTABLE_INT8, OnnxRunner, TorchRunner
from vision_mtl.export.onnx import export_checkpoint
from vision_mtl.errors import ConfigError
from vision_mtl.export.quantize import calibration_batches, compare_int8
from vision_mtl.inference.predictor import Predictor
from vision_mtl.utils import runtime
from vision_mtl.utils.runtime import resolve_precision

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


def test_int8_weights_keep_7_bits_so_every_x86_cpu_answers_alike(exported):
    """Without VNNI, onnxruntime adds two u8 x s8 products in a saturating int16: with weights in
    [-64, 64] (reduce_range) the pair stays within 2 * 255 * 64 = 32640 <= 32767, so AVX2, VNNI
    and AMX kernels compute the same sums. The graph's metadata says so."""
    model = onnx.load(str(exported["int8"]))
    weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]  # the conv/matmul weights, not biases
    assert len(weights) >= 10
    assert min(int(w.min()) for w in weights) >= -64 and max(int(w.max()) for w in weights) <= 64
    assert max(int(np.abs(w).max()) for w in weights) == 64  # the 7-bit range is used, not a narrower one
    assert 2 * 255 * 64 <= np.iinfo(np.int16).max
    assert {p.key: p.value for p in model.metadata_props}[INT8_KEY] == PORTABLE_INT8


def full_range_copy(int8: Path, out: Path) -> Path:
    """The int8 graph with the metadata of an export before issue 19: no ``vision_mtl.int8`` entry, which
    the runner takes for full 8-bit weights (it goes by the metadata, not by the weights)."""
    model = onnx.load(str(int8))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != INT8_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("vnni, graph, warned", [(False, "portable", False), (False, "full", True),
                                                 (True, "full", False)])
def test_a_full_range_int8_graph_warns_once_on_a_cpu_without_vnni(vnni, graph, warned, exported, tmp_path,
                                                                    monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(["avx2", "avx512_vnni"][: 1 + vnni]))
    path = exported["int8"] if graph == "portable" else full_range_copy(exported["int8"], tmp_path / "old.onnx")
    with caplog.at_level(logging.WARNING):
        runner = OnnxRunner(path)
        runner(torch.zeros((2, 3, 64, 64), dtype=torch.uint8))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == warned
    if warned:
        assert str(path) in warnings[0] and "VNNI" in warnings[0] and "--int8" in warnings[0] and one_line(warnings[0])


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


def test_an_unreadable_calibration_image_is_skipped_with_a_warning(make_config, shapes_root, tmp_path, caplog):
    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "000000_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # read after 000000.jpg
    for image in sorted((shapes_root / "val" / "images").iterdir())[:3]:
        (folder / image.name).write_bytes(image.read_bytes())
    with caplog.at_level(logging.WARNING):
        batches = calibration_batches(make_config(), SHAPES_CLASSES, folder, 3)
    # the broken file is left out and the next image takes its place
    first_three = calibration_batches(make_config(), SHAPES_CLASSES, shapes_root / "val" / "images", 3)
    assert torch.equal(torch.cat(batches), torch.cat(first_three))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "000000_broken.jpg" in warnings[0] and one_line(warnings[0])


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
    (["--int8", "--calib", "EMPTY"], "holds no readable images"),
])
def test_int8_user_mistakes_are_one_line(args, expected, trained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    proc = run_tool("export_onnx.py", "--weights", str(trained_run / "best.pt"), "--out", str(tmp_path / "m.onnx"),
                    *args)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert one_line(proc.stderr) and not (tmp_path / "m.onnx").exists()


# ----------------------------------------------------------------------------------------- bf16

def test_cpu_flags_are_the_flags_lines_of_cpuinfo(monkeypatch):
    cpuinfo = ("processor : 0\nmodel name : AMD EPYC avx512_bf16 edition\nflags : fpu sse avx2\n\n"
               "processor : 1\nflags\t\t: fpu sse avx2\nbugs : sysret_ss_attrs\n")
    monkeypatch.setattr(runtime.Path, "read_text", lambda self: cpuinfo)
    assert runtime.cpu_flags.__wrapped__() == {"fpu", "sse", "avx2"}  # uncached: the real flags stay cached


@pytest.mark.parametrize("flags, isa, bf16, vnni", [
    ("fpu sse4_2 avx avx2 fma", "AVX2", False, False),  # the EPYC of issue 19
    ("avx2 avx_vnni", "AVX2", False, True),
    ("avx2 avx512f avx512bw avx512_vnni", "AVX-512", False, True),
    ("avx2 avx512f avx512_vnni avx512_bf16", "AVX-512", True, True),
    ("avx2 avx512f amx_tile amx_bf16 amx_int8", "AMX", True, True),
    ("fpu sse4_2", "no AVX2", False, False),
])
def test_cpu_features_read_from_the_flags(flags, isa, bf16, vnni, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags.split()))
    assert (runtime.cpu_isa(), runtime.cpu_has_bf16(), runtime.cpu_has_vnni()) == (isa, bf16, vnni)


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
