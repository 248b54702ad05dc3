"""ONNX export: every task subset in one graph, compared with PyTorch through onnxruntime; the
runner contract (ONNX answers like PyTorch); the comparison itself failing where it should."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from conftest import IMAGE_SIZE, SHAPES_CLASSES, one_line
from vision_mtl.config import TASKS
from vision_mtl.data.loader import build_data
from vision_mtl.export.onnx import export_onnx
from vision_mtl.engine.export_wrapper import ExportWrapper, predictions_from_outputs
from vision_mtl.engine.model_info import ModelInfo
from vision_mtl.engine.preprocess import read_images
from vision_mtl.engine.runners import OnnxRunner, TorchRunner
from vision_mtl.export.verify import FLOAT16, FLOAT32, compare_outputs, sample_batches, verify_onnx
from vision_mtl.errors import CheckpointError, ExportError
from vision_mtl.models import build_model

SUBSETS = [(t,) for t in TASKS] + [(a, b) for i, a in enumerate(TASKS) for b in TASKS[i + 1:]] + [TASKS]
OUTPUTS_OF = {"classification": ["cls_scores"], "detection": ["det_boxes", "det_scores", "det_labels", "det_num"],
              "segmentation": ["seg_mask"]}


def tiny(make_config, tasks, *extra):
    """A random tiny model whose detection scores are spread out: a fresh head scores every location
    alike, and between near-equal scores NMS's choice would be arbitrary in any runtime."""
    cfg = make_config(f"model.tasks=[{','.join(tasks)}]", *extra)
    torch.manual_seed(0)
    model = build_model(cfg.model, SHAPES_CLASSES).eval()
    if "detection" in tasks:
        torch.nn.init.normal_(model.heads["detection"].cls_logits.weight, std=0.5)
    return model, ModelInfo.of(model, cfg, SHAPES_CLASSES, [1, 2, 3, 4] if "detection" in tasks else None)


def assert_same_predictions(expected, actual, atol=1e-4):
    """PyTorch vs ONNX predictions: scores within ``atol``, identical masks, same detections in any order."""
    assert expected.keys() == actual.keys()
    if "classification" in expected:
        torch.testing.assert_close(actual["classification"]["scores"], expected["classification"]["scores"],
                                   atol=atol, rtol=0)
    if "segmentation" in expected:
        assert torch.equal(actual["segmentation"]["mask"], expected["segmentation"]["mask"])
    if "detection" in expected:
        names = {"boxes": "det_boxes", "scores": "det_scores", "labels": "det_labels", "num": "det_num"}
        exp = {names[k]: v.numpy() for k, v in expected["detection"].items()}
        act = {names[k]: v.numpy() for k, v in actual["detection"].items()}
        assert compare_outputs(exp, act, FLOAT32)["det_unmatched"] == 0.0
        assert int(expected["detection"]["num"].sum()) > 0  # something was compared


@pytest.mark.parametrize("tasks", SUBSETS, ids=lambda t: "+".join(t))
def test_export_matches_pytorch_for_every_task_subset(tasks, make_config, tmp_path):
    """Default exporter; the three-task graph is exported with dynamic height and width as well
    (one export instead of two: each takes seconds), checked at a second size too."""
    model, info = tiny(make_config, tasks)
    wrapper = ExportWrapper(model)
    dynamic = tasks == TASKS
    path = export_onnx(wrapper, info, tmp_path / "model.onnx", dynamic=dynamic)
    batches = sample_batches(IMAGE_SIZE, dynamic=dynamic)
    assert [len(b) for b in batches[:2]] == [1, 3]  # one graph, two batch sizes
    report = verify_onnx(path, wrapper, batches, FLOAT32)

    names = [n for t in tasks for n in OUTPUTS_OF[t]]
    graph = onnx.load(str(path))
    assert [o.name for o in graph.graph.output] == names
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, dynamic, dynamic]
    for name in ("cls_scores", "det_scores"):
        if name in report:
            assert report[name] <= 1e-4
    assert report.get("det_unmatched", 0.0) == 0.0 and report.get("seg_mask", 0.0) == 0.0
    meta = {p.key: p.value for p in graph.metadata_props}
    assert ModelInfo.from_metadata(meta, str(path)) == info
    assert meta["mean"] and meta["std"] and meta["image_size"] == str(IMAGE_SIZE) and "vision_mtl_config" in meta
    assert list(json.loads(meta["outputs"])) == names

    runner = OnnxRunner(path)
    assert runner.tasks == list(tasks) and runner.info.classes == info.classes and runner.dynamic_size == dynamic
    for images in batches:
        assert_same_predictions(TorchRunner(model, info, torch.device("cpu"))(images), runner(images))


@pytest.mark.parametrize("nms, seg_logits", [(True, False), (False, True)])
def test_predictions_from_outputs_inverts_the_wrapper(nms, seg_logits, make_config):
    model, info = tiny(make_config, TASKS)
    wrapper = ExportWrapper(model, nms=nms, seg_logits=seg_logits)
    x = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = model.predict(model(x), (IMAGE_SIZE, IMAGE_SIZE))
        outputs = dict(zip(wrapper.output_names, wrapper(x)))
    assert ("det_candidate_scores" in outputs) != nms and ("seg_logits" in outputs) == seg_logits
    got = predictions_from_outputs(outputs, model.heads["detection"].cfg)
    for task in expected:
        for key, value in expected[task].items():
            assert torch.equal(got[task][key], value), f"{task}/{key}"


def test_no_nms_and_seg_logits_graph_under_the_torchscript_exporter(make_config, tmp_path):
    """Candidates and logits leave the graph; the runner finishes NMS and argmax in torch, with the
    model's own thresholds, and answers like PyTorch."""
    model, info = tiny(make_config, TASKS)
    wrapper = ExportWrapper(model, nms=False, seg_logits=True)
    path = export_onnx(wrapper, info, tmp_path / "raw.onnx", exporter="torchscript")
    report = verify_onnx(path, wrapper, sample_batches(IMAGE_SIZE), FLOAT32)
    assert report["seg_logits"] <= 1e-4 and report["det_candidate_scores"] <= 1e-4
    images = sample_batches(IMAGE_SIZE)[1]
    assert_same_predictions(TorchRunner(model, info, torch.device("cpu"))(images), OnnxRunner(path)(images))


def test_half_export_takes_float16_and_stays_close(make_config, tmp_path):
    model, info = tiny(make_config, TASKS)
    wrapper = ExportWrapper(model)
    path = export_onnx(wrapper, info, tmp_path / "half.onnx", half=True, exporter="torchscript")
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT  # postprocessing in float32
    report = verify_onnx(path, wrapper, sample_batches(IMAGE_SIZE), FLOAT16)
    assert report["cls_scores"] <= FLOAT16.atol
    assert next(model.parameters()).dtype == torch.float32  # the exported copy was halved, not the model


# ------------------------------------------------------------------------------- the comparison

def detections_of(*rows):
    """One image's detections, padded to 4: rows of (x1, y1, x2, y2, score, label)."""
    boxes, scores, labels = np.zeros((1, 4, 4), np.float32), np.zeros((1, 4), np.float32), np.full((1, 4), -1)
    for i, (*box, score, label) in enumerate(rows):
        boxes[0, i], scores[0, i], labels[0, i] = box, score, label
    return {"det_boxes": boxes, "det_scores": scores, "det_labels": labels, "det_num": np.array([len(rows)])}


def test_compare_outputs_names_the_output_that_differs():
    scores = np.array([[0.2, 0.8]], np.float32)
    assert compare_outputs({"cls_scores": scores}, {"cls_scores": scores + 5e-5}, FLOAT32)["cls_scores"] <= 1e-4
    with pytest.raises(ExportError) as info:
        compare_outputs({"cls_scores": scores}, {"cls_scores": scores + 1e-3}, FLOAT32, "batch of 1")
    assert one_line(str(info.value)) and "cls_scores" in str(info.value) and "0.001" in str(info.value)
    with pytest.raises(ExportError, match="shape"):
        compare_outputs({"cls_scores": scores}, {"cls_scores": scores[:, :1]}, FLOAT32)
    mask = np.zeros((1, 40, 50), np.int64)
    flipped = mask.copy()
    flipped[0, 0, :3] = 1  # 0.15 % of the pixels
    assert compare_outputs({"seg_mask": mask}, {"seg_mask": flipped}, FLOAT16)["seg_mask"] == pytest.approx(0.0015)
    with pytest.raises(ExportError, match="seg_mask"):
        compare_outputs({"seg_mask": mask}, {"seg_mask": flipped}, FLOAT32)


def test_compare_outputs_matches_detections_as_sets():
    a, b = (0, 0, 10, 10, 0.5, 1), (20, 20, 30, 30, 0.5, 2)  # tied scores: either order is right
    report = compare_outputs(detections_of(a, b), detections_of(b, a), FLOAT32)
    assert report["det_unmatched"] == 0.0 and report["det_boxes"] == 0.0
    with pytest.raises(ExportError, match="1 of 3 unmatched"):
        compare_outputs(detections_of(a, b), detections_of(a), FLOAT32)
    with pytest.raises(ExportError, match="unmatched"):
        compare_outputs(detections_of(a), detections_of((0, 0, 10, 10, 0.5, 2)), FLOAT32)  # other class
    with pytest.raises(ExportError, match="unmatched"):
        compare_outputs(detections_of(a), detections_of((0, 0, 10.1, 10, 0.5, 1)), FLOAT32)  # box moved


def test_onnx_runner_rejects_a_foreign_graph(tmp_path):
    node = helper.make_node("Identity", ["images"], ["out"])
    graph = helper.make_graph([node], "foreign", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(CheckpointError) as info:
        OnnxRunner(tmp_path / "foreign.onnx")
    assert one_line(str(info.value)) and "tools/export_onnx.py" in str(info.value)
    (tmp_path / "broken.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError) as info:
        OnnxRunner(tmp_path / "broken.onnx")
    assert one_line(str(info.value)) and "broken.onnx" in str(info.value)


def sigmoid_in_onnxruntime(x: np.ndarray) -> np.ndarray:
    """onnxruntime's own Sigmoid operator on ``x`` (float32)."""
    node = helper.make_node("Sigmoid", ["x"], ["y"])
    graph = helper.make_graph([node], "sigmoid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0]


def test_detection_scores_stay_exact_where_a_sigmoid_underflows(make_config, tmp_path):
    """Candidate scores are sqrt(sigmoid(class logit) x sigmoid(centerness)). onnxruntime's Sigmoid
    flushes results below ~2e-8 to zero (and is coarse a little above), so the graph computes them in
    log space: run in onnxruntime, the exported scores match the exact values where a Sigmoid gives 0."""
    cls_bias, ctr_bias = np.array([-40.0, -25.0, -18.9, -16.0]), -19.0
    assert (sigmoid_in_onnxruntime(cls_bias) == 0).sum() == 3  # the premise: a plain Sigmoid loses them
    model, info = tiny(make_config, ("detection",))
    head = model.heads["detection"]
    with torch.no_grad():  # every location gets the same logits: the biases
        for conv, bias in ((head.cls_logits, cls_bias), (head.centerness, [ctr_bias])):
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor(bias))
    path = export_onnx(ExportWrapper(model, nms=False), info, tmp_path / "candidates.onnx",
                       exporter="torchscript")  # seconds, not tens; its scoring ops are the same as dynamo's
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).random((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    (scores,) = session.run(["det_candidate_scores"], {"images": images})  # [1, locations, 4 classes]
    exact = 1 / np.sqrt((1 + np.exp(-cls_bias)) * (1 + np.exp(-ctr_bias)))  # in float64: 1.5e-13 .. 2.6e-8
    np.testing.assert_allclose(scores, np.broadcast_to(exact, scores.shape), rtol=1e-4, atol=0)


def test_images_from_a_folder_are_prepared_like_the_loaders_do(make_config):
    """One preprocessing for every path: the export check's images equal the validation loader's."""
    cfg = make_config()
    batch = next(iter(build_data(cfg, classes=SHAPES_CLASSES, train=False).val))
    paths = [meta["path"] for meta in batch.meta[:3]]
    folder = Path(paths[0]).parent
    assert sorted(paths) == paths and all(Path(p).parent == folder for p in paths)
    first, three = sample_batches(IMAGE_SIZE, folder)
    assert torch.equal(three, batch.images[:3]) and torch.equal(first, batch.images[:1])
    prepared = read_images([Path(p) for p in paths], IMAGE_SIZE)
    assert [m["scale"] for m in prepared.meta] == [m["scale"] for m in batch.meta[:3]]
