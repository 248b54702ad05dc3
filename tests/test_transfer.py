"""Transfer: model.init_from / init_parts / freeze, and the load report (issue 12)."""

from __future__ import annotations

import pytest
import torch

from conftest import SHAPES_CLASSES, one_line
from test_checkpoint import write_onnx_graph
from vision_mtl.config import load_config
from vision_mtl.engine.checkpoint import load_checkpoint, save_checkpoint
from vision_mtl.errors import CheckpointError, ConfigError
from vision_mtl.models import build_model
from vision_mtl.training.transfer import init_from_checkpoint
from vision_mtl.training.trainer import Trainer


@pytest.fixture(scope="module")
def det_seg_checkpoint(tiny_overrides, tmp_path_factory):
    """A detection+segmentation model trained a little (one epoch of two steps)."""
    cfg = load_config(None, [*tiny_overrides, "model.tasks=[detection, segmentation]", "train.epochs=1",
                             "train.plots=false", f"run.dir={tmp_path_factory.mktemp('detseg')}", "run.name=detseg"])
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer.run_dir / "last.pt"


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_new_head_on_a_frozen_trained_model_is_all_that_trains(make_config, det_seg_checkpoint):
    """The issue's test: a classification head added to a trained det+seg model with the rest frozen."""
    saved = load_checkpoint(det_seg_checkpoint)["model"]
    cfg = make_config("model.tasks=[classification, detection, segmentation]", f"model.init_from={det_seg_checkpoint}",
                      "model.freeze=[backbone, neck, heads]", "train.epochs=1", "train.plots=false", "run.name=transfer")
    trainer = Trainer(cfg)
    new_head_before = _state(trainer.model.heads.classification)
    assert trainer.load_report.new == ["heads.classification.fc.weight", "heads.classification.fc.bias"]
    trainer.fit()

    after = trainer.model.state_dict()
    loaded = [k for k in after if not k.startswith("heads.classification.")]
    assert sorted(trainer.load_report.loaded) == sorted(loaded) == sorted(saved)
    for key in loaded:  # weights and batch-norm statistics alike
        assert torch.equal(after[key], saved[key]), key
    for key, before in new_head_before.items():
        assert not torch.equal(trainer.model.heads.classification.state_dict()[key], before), key
    report = (trainer.run_dir / "init_report.txt").read_text()
    assert "new (task not in the checkpoint): 2\n  heads.classification.fc.weight\n  heads.classification.fc.bias" \
        in report
    assert report.splitlines()[0] == trainer.load_report.summary()
    assert f"{len(saved)} tensors loaded" in report.splitlines()[0]


def test_new_head_trains_with_the_rest_when_nothing_is_frozen(make_config, det_seg_checkpoint):
    saved = load_checkpoint(det_seg_checkpoint)["model"]
    cfg = make_config(f"model.init_from={det_seg_checkpoint}", "train.epochs=1", "train.max_steps_per_epoch=1")
    trainer = Trainer(cfg)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in saved.items())
    trainer.training_step(next(iter(trainer.data.train)))
    first_conv = next(k for k, v in saved.items() if k.startswith("backbone.") and v.ndim == 4)
    assert not torch.equal(trainer.model.state_dict()[first_conv], saved[first_conv])


def test_init_parts_backbone_leaves_neck_and_heads_fresh(make_config, det_seg_checkpoint):
    cfg = make_config("model.tasks=[detection, segmentation]")
    classes = {task: SHAPES_CLASSES[task] for task in cfg.model.tasks}
    model = build_model(cfg.model, classes)
    fresh = _state(model)
    report = init_from_checkpoint(model, det_seg_checkpoint, ["backbone"], classes)
    saved, now = load_checkpoint(det_seg_checkpoint)["model"], model.state_dict()
    assert report.loaded == [k for k in now if k.startswith("backbone.")]
    assert report.skipped == [k for k in now if not k.startswith("backbone.")] and report.skipped
    for key in now:
        expected = saved[key] if key.startswith("backbone.") else fresh[key]
        assert torch.equal(now[key], expected), key
    assert any(not torch.equal(saved[k], fresh[k]) for k in report.skipped)  # the test can tell the two apart


def test_head_with_other_classes_is_fresh_and_reported(make_config, det_seg_checkpoint):
    cfg = make_config("model.tasks=[detection, segmentation]")
    classes = {**{task: SHAPES_CLASSES[task] for task in cfg.model.tasks}, "detection": ["a", "b", "c"]}
    model = build_model(cfg.model, classes)
    fresh = _state(model)
    report = init_from_checkpoint(model, det_seg_checkpoint, ["backbone", "neck", "heads"], classes)
    assert report.mismatched == [k for k in fresh if k.startswith("heads.detection.")]
    assert all(torch.equal(model.state_dict()[k], fresh[k]) for k in report.mismatched)
    assert report.loaded_heads == ["segmentation"]
    assert "(fresh heads: detection)" in report.summary()


def test_another_backbone_is_a_one_line_error(make_config, det_seg_checkpoint, tmp_path):
    other = make_config("model.tasks=[detection, segmentation]", "model.backbone=resnet10t")
    classes = {task: SHAPES_CLASSES[task] for task in other.model.tasks}
    path = tmp_path / "other.pt"
    save_checkpoint(path, build_model(other.model, classes), other, classes)
    with pytest.raises(CheckpointError, match=r"its backbone does not fit this model") as err:
        Trainer(make_config(f"model.init_from={path}", "run.name=other"))
    assert one_line(err.value)


def test_init_from_a_missing_file_is_the_checkpoint_error(make_config, tmp_path):
    with pytest.raises(CheckpointError, match="not found") as err:
        Trainer(make_config(f"model.init_from={tmp_path / 'nope.pt'}"))
    assert one_line(err.value)


def test_init_from_an_onnx_graph_says_it_takes_a_checkpoint(make_config, tmp_path):
    path = write_onnx_graph(tmp_path / "model.onnx")
    with pytest.raises(CheckpointError) as err:
        Trainer(make_config(f"model.init_from={path}"))
    assert str(err.value) == (f"model.init_from '{path}' is an ONNX graph, not a checkpoint; pass a checkpoint (.pt) "
                              "written by tools/train.py")


def test_freezing_everything_loaded_with_no_new_head_is_a_one_line_error(make_config, det_seg_checkpoint):
    cfg = make_config("model.tasks=[detection, segmentation]", f"model.init_from={det_seg_checkpoint}",
                      "model.freeze=[backbone, neck, heads]")
    with pytest.raises(ConfigError, match=r"model.freeze=\[backbone, neck, heads\] leaves nothing to train") as err:
        Trainer(cfg)
    assert one_line(err.value)
