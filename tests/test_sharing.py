"""Sharing schemes (issue 12 item 2): model.sharing = hard | neck | branch, frozen backbone stages with
an unfreeze epoch; each trains, exports to ONNX, runs inference, transfers and balances gradients."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, SHAPES_CLASSES, one_line
from vision_mtl.config import load_config
from vision_mtl.engine.checkpoint import load_checkpoint
from vision_mtl.errors import CheckpointError, ConfigError, ModelError
from vision_mtl.export.onnx import export_checkpoint
from vision_mtl.inference.predictor import Predictor
from vision_mtl.models import build_model
from vision_mtl.models.summary import sharing_summary
from vision_mtl.training.transfer import init_from_checkpoint
from vision_mtl.mtl import build_balancer, independent
from vision_mtl.training.trainer import Trainer

SCHEMES = {"neck": ["model.sharing=neck"], "branch": ["model.sharing=branch", "model.branch_stage=2"]}


def _model(make_config, *overrides):
    torch.manual_seed(0)
    return build_model(make_config(*overrides).model, SHAPES_CLASSES).eval()


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _stage_names(model, upto: int) -> set[str]:
    ids = {id(p) for module in model.backbone.stage_modules(upto) for p in module.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_hard_sharing_is_backbone_then_one_pyramid_for_every_head(make_config):
    model = _model(make_config)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        pyramid = model.neck(model.backbone((images - model.mean) / model.std))
        expected = {task: head(pyramid) for task, head in model.heads.items()}
        actual = model(images)
    for task, raw in expected.items():
        for key, value in raw.items():
            assert torch.equal(actual[task][key], value), (task, key)
    assert {key.split(".")[0] for key in model.state_dict()} == {"backbone", "neck", "heads"}
    assert not any(key.startswith(("neck.classification", "backbone.branches")) for key in model.state_dict())
    assert _count(model.shared_parameters()) == _count(model.backbone.parameters()) + _count(model.neck.parameters())


def test_branch_copies_give_each_task_the_unsplit_backbone(make_config):
    """At build time every task's copy equals the shared backbone, so the branch model answers like the
    neck model built from the same seed; a change to one task's copy changes that task alone."""
    neck, branch = _model(make_config, *SCHEMES["neck"]), _model(make_config, *SCHEMES["branch"])
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = neck(images), branch(images)
        for task in expected:
            for key in expected[task]:
                torch.testing.assert_close(actual[task][key], expected[task][key], rtol=0, atol=1e-6)
        for param in branch.backbone.branches["detection"].parameters():
            param.add_(0.1)
        changed = branch(images)
    assert not torch.allclose(changed["detection"]["cls_logits"], actual["detection"]["cls_logits"])
    for task in ("classification", "segmentation"):
        assert torch.equal(changed[task]["logits"], actual[task]["logits"]), task
    assert set(branch.features(images)) == {2}  # branch_stage=2: only C2 is shared


def test_parameter_counts_follow_the_sharing(make_config):
    hard, neck = _model(make_config), _model(make_config, *SCHEMES["neck"])
    branches = {k: _model(make_config, "model.sharing=branch", f"model.branch_stage={k}") for k in (1, 2, 3, 4)}
    total = {name: _count(m.parameters()) for name, m in {"hard": hard, "neck": neck, **branches}.items()}
    assert total["hard"] < total["neck"] < total[4] < total[3] < total[2] < total[1]
    shared = {name: _count(m.shared_parameters()) for name, m in {"hard": hard, "neck": neck, **branches}.items()}
    assert shared["hard"] > shared["neck"] > shared[4] > shared[3] > shared[2] > shared[1] > 0
    assert shared["neck"] == _count(neck.backbone.parameters())


def test_summary_line_counts_the_parameters_and_times_a_forward(make_config):
    model = _model(make_config, *SCHEMES["neck"])
    model.train()
    line = sharing_summary(model, 2, 64, torch.device("cpu"))
    total, shared = _count(model.parameters()) / 1e6, _count(model.shared_parameters()) / 1e6
    assert line.startswith(f"model.sharing=neck: {total:.2f} M parameters ({shared:.2f} M shared), ")
    assert "ms per batch of 2 at 64 px" in line and one_line(line)
    assert model.training  # left as it was


@pytest.mark.parametrize("overrides, key", [
    (["model.sharing=branch", "model.branch_stage=5"], "model.branch_stage"),
    (["model.unfreeze_epoch=2"], "model.unfreeze_epoch"),
    (["model.freeze_stages=2", "model.freeze=[backbone]"], "model.freeze_stages"),
    (["model.sharing=shared"], "model.sharing"),
])
def test_sharing_mistakes_are_one_line(make_config, overrides, key):
    with pytest.raises(ConfigError) as info:
        make_config(*overrides)
    assert one_line(info.value) and key in str(info.value)


def test_a_backbone_timm_cannot_split_is_refused_in_one_line(make_config):
    with pytest.raises(ModelError) as info:
        _model(make_config, "model.backbone=test_efficientnet", "model.sharing=branch")
    assert one_line(info.value) and "model.sharing=branch" in str(info.value)


@pytest.fixture(scope="module")
def scheme_runs(tiny_overrides, tmp_path_factory) -> dict:
    """Each non-hard scheme trained 2 epochs x 2 steps (its last.pt and final losses)."""
    runs = {}
    for name, overrides in SCHEMES.items():
        cfg = load_config(None, [*tiny_overrides, *overrides, "train.plots=false",
                                 f"run.dir={tmp_path_factory.mktemp(name)}", f"run.name={name}"])
        trainer = Trainer(cfg)
        trainer.fit()
        runs[name] = {"weights": trainer.run_dir / "last.pt", "losses": trainer._floats(trainer.last_losses)}
    return runs


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_each_scheme_trains_exports_and_infers(scheme, scheme_runs, tmp_path):
    run = scheme_runs[scheme]
    assert run["losses"] and all(np.isfinite(v) for v in run["losses"].values())
    assert load_checkpoint(run["weights"])["config"]["model"]["sharing"] == scheme
    onnx_path = tmp_path / "model.onnx"
    # raises when ONNX and PyTorch disagree; torchscript: seconds, not tens, and the same graph ops
    differences = export_checkpoint(run["weights"], onnx_path, exporter="torchscript")
    assert differences and onnx_path.is_file()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    from_torch, from_onnx = Predictor(run["weights"]).predict(images), Predictor(onnx_path).predict(images)
    for expected, actual in zip(from_torch, from_onnx):
        np.testing.assert_allclose(actual.class_scores, expected.class_scores, atol=1e-4)
        assert np.array_equal(actual.mask, expected.mask)


@pytest.mark.parametrize("scheme, balancer", [("neck", "pcgrad"), ("branch", "upgrad"), ("branch", "gradnorm")])
def test_gradient_balancers_train_each_scheme(make_config, scheme, balancer):
    trainer = Trainer(make_config(*SCHEMES[scheme], f"mtl.balancer={balancer}", "train.plots=false"))
    batches = iter(trainer.data.train)
    for _ in range(2):
        losses = trainer.training_step(next(batches))
        assert all(np.isfinite(v) for v in losses.values()), losses
    shared = trainer.model.shared_parameters()
    assert all(p.grad is not None for p in shared)
    assert all(p.grad is not None for p in trainer.model.neck.parameters())  # each task's own neck


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_one_task_aggregated_gradient_is_its_plain_gradient(make_config, scheme):
    """The shared features of neck and branch sharing are backbone levels computed from one another
    (C3 from C2), like P6 from P5: through ``independent`` each path counts once, so UPGrad of a
    single task's Jacobian is exactly that task's gradient of the trunk."""
    cfg = make_config(*SCHEMES[scheme], "model.branch_stage=4", "model.tasks=[segmentation]", "mtl.balancer=upgrad")
    torch.manual_seed(0)
    model = build_model(cfg.model, SHAPES_CLASSES)
    images, shared = torch.rand(2, 3, 64, 64), model.shared_parameters()
    expected = torch.autograd.grad(model(images)["segmentation"]["logits"].square().mean(), shared)
    features = independent(model.features(images))
    assert {3, 4} <= set(features)  # C4 from C3, both read by the task: the case independent() is for
    loss = model.heads_forward(features)["segmentation"]["logits"].square().mean()
    build_balancer(cfg, cfg.model.tasks).backward({"segmentation": loss}, {"segmentation": torch.tensor(True)},
                                                  list(features.values()), shared, model.task_parameters())
    for param, grad in zip(shared, expected):
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_a_step_that_skips_a_task_skips_its_own_stages_and_neck(make_config, scheme):
    """With ``mtl.schedule=round_robin`` a step trains one task: only that task's neck (and branch) run."""
    trainer = Trainer(make_config(*SCHEMES[scheme], "mtl.schedule=round_robin", "train.plots=false"))
    trainer.training_step(next(iter(trainer.data.train)))
    trained = [task for task, neck in trainer.model.neck.items() if all(p.grad is not None for p in neck.parameters())]
    assert len(trained) == 1
    assert all(p.grad is None for task, neck in trainer.model.neck.items() if task != trained[0]
               for p in neck.parameters())
    if scheme == "branch":
        assert [task for task, branch in trainer.model.backbone.branches.items()
                if next(branch.parameters()).grad is not None] == trained


def test_transfer_across_schemes_takes_what_fits_and_refuses_the_rest(make_config, scheme_runs):
    """A hard model from a neck-sharing checkpoint: the backbone and heads fit; its per-task necks do not."""
    weights = scheme_runs["neck"]["weights"]
    saved = load_checkpoint(weights)["model"]
    model = _model(make_config)
    report = init_from_checkpoint(model, weights, ["backbone", "heads"], SHAPES_CLASSES)
    assert report.loaded and all(torch.equal(model.state_dict()[k], saved[k]) for k in report.loaded)
    assert {k.split(".")[0] for k in report.loaded} == {"backbone", "heads"} and report.skipped
    with pytest.raises(CheckpointError) as info:
        init_from_checkpoint(_model(make_config), weights, ["backbone", "neck", "heads"], SHAPES_CLASSES)
    assert one_line(info.value) and "model.sharing=neck" in str(info.value)


def test_frozen_stages_stay_until_the_unfreeze_epoch_and_resume_is_exact(make_config, caplog):
    """Stages 1..2 frozen until epoch 2: unchanged (batch-norm statistics too) after epoch 1, trained in
    epoch 2; a run stopped after epoch 1 and resumed ends with the uninterrupted run's weights."""
    overrides = ("model.freeze_stages=2", "model.unfreeze_epoch=2", "train.plots=false", "train.ema_decay=0")
    full = Trainer(make_config(*overrides, "run.name=full"))
    with caplog.at_level(logging.INFO, logger="vision_mtl"):
        full.fit()
    assert any(r.getMessage().startswith("model.sharing=hard: ") for r in caplog.records)

    cut = Trainer(make_config(*overrides, "run.name=cut"))
    frozen = _stage_names(cut.model, 2)
    initial = {k: v.clone() for k, v in cut.model.state_dict().items()}
    assert frozen and not any(p.requires_grad for n, p in cut.model.named_parameters() if n in frozen)
    cut.position.epochs = 1  # stop after epoch 1; the resume goes on to train.epochs
    cut.fit()
    after_one = cut.model.state_dict()
    stage_keys = [k for k in after_one if k.rsplit(".", 1)[0] in {n.rsplit(".", 1)[0] for n in frozen}]
    assert any("running_mean" in k for k in stage_keys)
    assert all(torch.equal(after_one[k], initial[k]) for k in stage_keys)
    assert not all(torch.equal(after_one[k], initial[k]) for k in after_one if k.startswith("backbone.body.layer2"))

    resumed = Trainer.resume(cut.run_dir)
    resumed.fit()
    final = resumed.model.state_dict()
    assert not any(torch.equal(final[n], initial[n]) for n in frozen if n.endswith("weight"))
    for key, value in full.model.state_dict().items():
        assert torch.equal(final[key], value), key


def test_two_processes_train_a_branched_model_alike(tiny_overrides, tmp_path):
    """A 2-process gloo run (tests/distributed_train.py) with branch sharing: both end with the same weights."""
    overrides = [*tiny_overrides, *SCHEMES["branch"], "train.epochs=1", "train.plots=false",
                 f"run.dir={tmp_path}", "run.name=ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO_ROOT / "tests" / "distributed_train.py"), str(tmp_path), *overrides],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert any(name.startswith("backbone.branches.segmentation.") for name in ranks[0]["parameters"])
    for name, value in ranks[0]["parameters"].items():
        torch.testing.assert_close(ranks[1]["parameters"][name], value, rtol=0, atol=0, msg=name)
