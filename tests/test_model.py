"""The shared trunk and the multi-task model: backbone errors, pyramid levels, every task subset trains."""

from __future__ import annotations

import itertools
import math

import pytest
import timm
import torch

from conftest import SHAPES_CLASSES, TINY_MODEL, one_line
from vision_mtl.config import TASKS, load_config
from vision_mtl.training.trainer import Trainer
from vision_mtl.errors import ModelError
from vision_mtl.models import build_model
from vision_mtl.models.backbone import Backbone

SUBSETS = [list(c) for n in (1, 2, 3) for c in itertools.combinations(TASKS, n)]


# ------------------------------------------------------------------------------------- backbone

def test_backbone_gives_c2_to_c5_at_pyramid_strides():
    backbone = Backbone("test_resnet")
    feats = backbone(torch.rand(2, 3, 64, 64))
    assert sorted(feats) == [2, 3, 4, 5]
    for level, x in feats.items():
        assert x.shape[-1] == 64 // 2**level
        assert x.shape[1] == backbone.channels[level]


def test_unknown_backbone_is_a_model_error():
    with pytest.raises(ModelError) as info:
        Backbone("resnet_does_not_exist")
    message = str(info.value)
    assert one_line(message) and "resnet_does_not_exist" in message
    assert "did you mean" in message or "timm.list_models" in message


def test_backbone_typo_suggests_close_names():
    with pytest.raises(ModelError) as info:
        build_model(load_config(None, ["model.backbone=test_resnt"]).model, SHAPES_CLASSES)
    assert one_line(info.value) and "did you mean" in str(info.value) and "test_resnet" in str(info.value)


def test_missing_backbone_weights_is_a_model_error(tmp_path):
    cfg = load_config(None, [*TINY_MODEL, f"model.backbone_weights={tmp_path / 'nonexistent.pth'}"])
    with pytest.raises(ModelError) as info:
        build_model(cfg.model, SHAPES_CLASSES)
    assert one_line(info.value) and "nonexistent.pth" in str(info.value)


def test_backbone_weights_of_another_model_are_a_model_error(tmp_path):
    path = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), path)
    with pytest.raises(ModelError) as info:
        Backbone("test_resnet", str(path))
    assert one_line(info.value) and "test_resnet" in str(info.value)


def test_local_backbone_weights_are_loaded(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet")
    with torch.no_grad():
        source.conv1[0].weight.fill_(0.125)
    path = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), path)
    backbone = Backbone("test_resnet", str(path))
    loaded = dict(backbone.body.named_parameters())
    assert torch.equal(loaded["conv1.0.weight"], source.conv1[0].weight)
    assert torch.equal(loaded["layer4.0.conv1.weight"], source.layer4[0].conv1.weight)
    assert not torch.equal(Backbone("test_resnet").body.conv1[0].weight, source.conv1[0].weight)


def test_corrupt_backbone_weights_file_is_a_model_error(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_text("junk")
    with pytest.raises(ModelError) as info:
        Backbone("test_resnet", str(path))
    assert one_line(info.value)


def test_backbone_without_stride_4_to_32_features_is_a_model_error():
    with pytest.raises(ModelError) as info:
        Backbone("test_vit")
    assert one_line(info.value) and "strides" in str(info.value)


# ------------------------------------------------------------------------------- multi-task model

def test_neck_builds_only_the_levels_the_heads_use():
    cls_only = build_model(load_config(None, [*TINY_MODEL, "model.tasks=[classification]"]).model, SHAPES_CLASSES)
    feats = cls_only.neck(cls_only.backbone(torch.rand(2, 3, 64, 64)))
    assert sorted(feats) == [3, 4, 5]
    seg_only = build_model(load_config(None, [*TINY_MODEL, "model.tasks=[segmentation]",
                                              "model.segmentation.levels=[2,3,4,5]"]).model, SHAPES_CLASSES)
    assert sorted(seg_only.neck(seg_only.backbone(torch.rand(2, 3, 64, 64)))) == [2, 3, 4, 5]
    det = build_model(load_config(None, [*TINY_MODEL, "model.tasks=[detection]"]).model, SHAPES_CLASSES)
    feats = det.neck(det.backbone(torch.rand(2, 3, 64, 64)))
    assert sorted(feats) == [3, 4, 5, 6, 7]
    assert all(x.shape[1] == 16 for x in feats.values())


def test_model_heads_follow_config_and_classes():
    model = build_model(load_config(None, [*TINY_MODEL, "model.tasks=[segmentation, detection]"]).model,
                        SHAPES_CLASSES)
    assert model.tasks == ["segmentation", "detection"]
    raw = model(torch.rand(2, 3, 64, 64))
    assert set(raw) == {"segmentation", "detection"}
    assert raw["segmentation"]["logits"].shape[1] == len(SHAPES_CLASSES["segmentation"])
    assert raw["detection"]["cls_logits"].shape[-1] == len(SHAPES_CLASSES["detection"])


@pytest.mark.parametrize("tasks", SUBSETS, ids=lambda t: "+".join(t))
def test_every_task_subset_trains_one_step(tasks, make_config, tmp_path):
    cfg = make_config(f"model.tasks=[{', '.join(tasks)}]", "train.epochs=1", "train.max_steps_per_epoch=1")
    trainer = Trainer(cfg, run_dir=tmp_path)
    assert trainer.model.tasks == tasks
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    batch = next(iter(trainer.data.train))
    assert set(batch.targets) == set(tasks)
    losses = trainer.training_step(batch)
    assert math.isfinite(losses["loss"]) and losses["loss"] > 0
    assert {key.split("/")[0] for key in losses if key != "loss"} == set(tasks)
    assert all(math.isfinite(v) for v in losses.values())
    assert trainer.bad_steps == 0
    params = dict(trainer.model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    for task in tasks:
        head = [n for n in params if n.startswith(f"heads.{task}.")]
        assert any(not torch.equal(before[n], params[n]) for n in head), f"{task} head did not change"
    assert (tmp_path / "config.yaml").is_file()


def test_loss_weights_scale_the_total(make_config, tmp_path):
    """train.loss_weights multiply each task's loss; zero weight removes a task from the total."""
    losses = {}
    for weight in ("1", "0"):
        cfg = make_config("model.tasks=[classification, segmentation]", "train.loss_weights.classification=1.5",
                          f"train.loss_weights.segmentation={weight}")
        (tmp_path / weight).mkdir()
        trainer = Trainer(cfg, run_dir=tmp_path / weight)
        batch = next(iter(trainer.data.train))
        torch.manual_seed(0)
        losses[weight] = trainer.training_step(batch)
    seg = losses["1"]["segmentation/ce"] + losses["1"]["segmentation/dice"]
    assert losses["1"]["loss"] == pytest.approx(1.5 * losses["1"]["classification/ce"] + seg, rel=1e-5)
    assert losses["0"]["loss"] == pytest.approx(1.5 * losses["0"]["classification/ce"], rel=1e-5)


def test_non_finite_loss_skips_the_step_then_stops_with_a_user_error(make_config, tmp_path):
    from vision_mtl.training.trainer import MAX_BAD_STEPS, TrainingError

    trainer = Trainer(make_config("model.tasks=[classification]"), run_dir=tmp_path)
    batch = next(iter(trainer.data.train))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.model.loss = lambda raw, targets: {"classification": {"ce": raw["classification"]["logits"].sum() * float("nan")}}
    for step in range(MAX_BAD_STEPS - 1):
        losses = trainer.training_step(batch)
        assert math.isnan(losses["loss"]) and trainer.bad_steps == step + 1 and trainer.position.updates == 0
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # nothing stepped
    with pytest.raises(TrainingError) as info:
        trainer.training_step(batch)
    assert one_line(info.value) and "last.pt" in str(info.value) and "classification/ce" in str(info.value)
