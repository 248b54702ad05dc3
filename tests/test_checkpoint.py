"""Checkpoints: round trip, and one-line CheckpointErrors for missing, foreign and mismatched files."""

from __future__ import annotations

import pickle
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import SHAPES_CLASSES, one_line, run_tool
from vision_mtl.engine.checkpoint import (checkpoint_config, load_checkpoint, load_model, load_weights,
                                          save_checkpoint)
from vision_mtl.engine.runners import load_torch_runner
from vision_mtl.evaluation.saved import evaluate_weights
from vision_mtl.errors import CheckpointError
from vision_mtl.models import build_model


@pytest.fixture(scope="module")
def best(trained_run):
    return trained_run / "best.pt"


def test_checkpoint_round_trip(best):
    state = load_checkpoint(best)
    assert {"model", "config", "classes", "epoch", "best_score", "category_ids"} <= set(state)
    assert state["classes"] == SHAPES_CLASSES
    model, cfg, _ = load_model(best)
    assert cfg.model.backbone == "test_resnet" and cfg.model.neck_channels == 16
    own = model.state_dict()
    assert own.keys() == state["model"].keys()
    assert all(torch.equal(own[k], state["model"][k]) for k in own)


def test_save_checkpoint_is_atomic_and_loadable(tmp_path, make_config):
    cfg = make_config()
    model = build_model(cfg.model, SHAPES_CLASSES)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, cfg, SHAPES_CLASSES, epoch=3)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and checkpoint_config(state, path) == cfg


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert one_line(info.value) and "nope.pt" in str(info.value)


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are\nnot weights\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert one_line(info.value) and "notes.pt" in str(info.value)


def test_empty_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert one_line(info.value)


def test_torch_file_without_checkpoint_keys(tmp_path):
    path = tmp_path / "weights_only.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert one_line(info.value) and "not a vision_mtl checkpoint" in str(info.value)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_arbitrary_pickles_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "classes": {}, "x": _Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert one_line(info.value) and "weights_only" not in str(info.value)  # never torch's advice to load unsafely
    assert "unpickled!" not in capsys.readouterr().out


def write_onnx_graph(path: Path) -> Path:
    """A valid one-node ONNX graph at ``path``, whatever its suffix."""
    x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in "xy")
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])),
              str(path))
    return path


@pytest.mark.parametrize("name", ["model.onnx", "renamed.pt"])
def test_an_onnx_graph_is_named_as_such_by_suffix_or_content(name, tmp_path):
    path = write_onnx_graph(tmp_path / name)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint '{path}' is an ONNX graph, not a checkpoint; pass a checkpoint (.pt) "
                               "written by tools/train.py")


def test_evaluate_with_an_onnx_graph_named_pt_is_one_line(tmp_path):
    path = write_onnx_graph(tmp_path / "model.pt")  # .pt: the tool takes it for a checkpoint
    proc = run_tool("evaluate.py", "--weights", str(path))
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) and "is an ONNX graph, not a checkpoint" in proc.stderr
    assert "weights_only" not in proc.stderr


def test_checkpoint_with_unreadable_config(best, tmp_path):
    state = load_checkpoint(best)
    state["config"]["train"]["epochz"] = 3
    with pytest.raises(CheckpointError) as info:
        checkpoint_config(state, tmp_path / "x.pt")
    assert one_line(info.value) and "train.epochz" in str(info.value)


def test_weights_into_model_with_other_class_count(best):
    state = load_checkpoint(best)
    cfg = checkpoint_config(state, best)
    classes = {**SHAPES_CLASSES, "detection": SHAPES_CLASSES["detection"][:3]}
    model = build_model(cfg.model, classes)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, state["model"], best)
    message = str(info.value)
    assert one_line(message)
    assert "of another shape" in message and "cls_logits" in message and str(best) in message


def test_weights_into_model_with_other_tasks(best):
    state = load_checkpoint(best)
    cfg = checkpoint_config(state, best)
    cfg.model.tasks = ["classification", "detection"]
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model(cfg.model, state["classes"]), state["model"], best)
    assert one_line(info.value) and "unexpected" in str(info.value)


def test_load_model_with_a_config_of_another_model(best):
    state = load_checkpoint(best)
    cfg = checkpoint_config(state, best)
    cfg.model.neck_channels = 32
    with pytest.raises(CheckpointError) as info:
        load_model(best, cfg)
    assert one_line(info.value)


def test_evaluate_checkpoint_with_another_config_file(best, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("model:\n  tasks: [classification, detection]\n")
    with pytest.raises(CheckpointError) as info:
        evaluate_weights(best, config=other, progress=False)
    assert one_line(info.value) and "does not fit" in str(info.value)
    with pytest.raises(CheckpointError) as info:
        evaluate_weights(best, overrides=["model.segmentation.channels=32"], progress=False)
    assert one_line(info.value)


def test_a_checkpoint_loads_without_its_backbone_weights_file(tmp_path, make_config):
    """Training may start from a pretrained backbone file (model.backbone_weights). The checkpoint
    holds every weight, so loading it must not need that file: it is often gone, or on another machine."""
    cfg = make_config()
    model = build_model(cfg.model, SHAPES_CLASSES)
    cfg.model.backbone_weights = str(tmp_path / "gone" / "resnet.safetensors")
    path = tmp_path / "best.pt"
    save_checkpoint(path, model, cfg, SHAPES_CLASSES)
    loaded, loaded_cfg, _ = load_model(path)
    runner, runner_cfg = load_torch_runner(path)  # what evaluate, export, infer and benchmark use
    cfg.model.backbone_weights = None
    for rebuilt, rebuilt_cfg in ((loaded, loaded_cfg), (runner.model, runner_cfg)):
        assert rebuilt_cfg == cfg  # the checkpoint's own settings, without the weights file
        own = rebuilt.state_dict()
        assert all(torch.equal(own[k], v) for k, v in model.state_dict().items())


def test_a_saved_config_this_version_cannot_read_names_the_checkpoint(tmp_path, make_config):
    """A checkpoint from another version (here: a renamed key) is a problem with that file, not
    with the user's config or overrides, and the error says so."""
    cfg = make_config()
    path = tmp_path / "other-version.pt"
    save_checkpoint(path, build_model(cfg.model, SHAPES_CLASSES), cfg, SHAPES_CLASSES)
    state = load_checkpoint(path)
    state["config"]["model"]["neck_chanels"] = state["config"]["model"].pop("neck_channels")
    torch.save(state, path)
    for load in (load_model, load_torch_runner):
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert one_line(info.value)
        assert str(path) in str(info.value) and "model.neck_chanels" in str(info.value)
