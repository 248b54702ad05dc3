"""Gradient-aggregation balancers (mtl.balancer = pcgrad, upgrad, ...): the update direction on a toy
two-task problem with hand-made, conflicting gradients, and each one inside the Trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import one_line
from vision_mtl.config import load_config
from vision_mtl.errors import ConfigError
from vision_mtl.mtl import GRADIENT_BALANCERS, build_balancer, independent
from vision_mtl.training import trainer as trainer_module
from vision_mtl.training.trainer import Trainer
from vision_mtl.utils.distributed import Processes

TASKS = ["classification", "detection"]
# A two-level "pyramid" f5 = W x, f6 = 2 f5 (computed from f5, as P6 is from P5), x = e_1, and
# Loss_t = c_t . (f5 + f6): the task gradients on W are 3 c_t (x) e_1, here in conflict:
# g_cls . g_det < 0, and their plain sum has a negative dot product with g_cls.
HEAD_WEIGHTS = {"classification": [1.0, 0.0], "detection": [-2.0, 1.0]}


class Toy(nn.Module):
    """A shared 2x2 linear layer giving two levels, and one fixed-direction linear head per task."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(2, 2, bias=False)
        self.heads = nn.ModuleDict({task: nn.Linear(2, 1, bias=False) for task in TASKS})
        with torch.no_grad():
            self.shared.weight.copy_(torch.eye(2))
            for task, weight in HEAD_WEIGHTS.items():
                self.heads[task].weight.copy_(torch.tensor([weight]))

    def losses(self) -> tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]:
        f5 = self.shared(torch.tensor([[1.0, 0.0]]))
        features = independent({5: f5, 6: 2 * f5})
        return features, {task: (head(features[5]) + head(features[6])).sum() for task, head in self.heads.items()}


def _task_gradients(toy: Toy) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each task's own (shared weight, head weight) gradient, by plain autograd."""
    _, losses = toy.losses()
    return {task: torch.autograd.grad(loss, [toy.shared.weight, toy.heads[task].weight], retain_graph=True)
            for task, loss in losses.items()}


def _step(name: str, present: dict[str, bool], scale: float = 1.0, toy: Toy | None = None) -> Toy:
    toy = toy or Toy()
    balancer = build_balancer(load_config(None, [f"mtl.balancer={name}"]), TASKS)
    features, losses = toy.losses()
    balancer.backward(losses, {t: torch.tensor(p) for t, p in present.items()}, list(features.values()),
                      list(toy.shared.parameters()), scale=scale)
    return toy


def test_the_toy_gradients_conflict_so_the_plain_sum_would_hurt_one_task():
    grads = {task: g.flatten() for task, (g, _) in _task_gradients(Toy()).items()}
    assert grads["classification"] @ grads["detection"] < 0
    assert (grads["classification"] + grads["detection"]) @ grads["classification"] < 0


@pytest.mark.parametrize("name", ["pcgrad", "upgrad", "mgda"])
def test_the_update_has_no_negative_dot_product_with_any_task_gradient(name):
    """PCGrad (Yu et al. 2020) projects away the conflicts; UPGrad and MGDA are non-conflicting by
    construction: the shared direction d has d . g_t >= 0 for every task."""
    toy = _step(name, {"classification": True, "detection": True})
    direction = toy.shared.weight.grad.flatten()
    assert direction.norm() > 1e-3
    for task, (shared_grad, head_grad) in _task_gradients(Toy()).items():
        assert direction @ shared_grad.flatten() >= -1e-6, task
        assert torch.allclose(toy.heads[task].weight.grad, head_grad)  # each head: its own task gradient


def test_the_update_accumulates_into_grad_like_a_plain_backward():
    """Two micro-steps at scale 1/2 give the gradient of one step at scale 1 (train.accumulate=2)."""
    present = {"classification": True, "detection": True}
    once = _step("upgrad", present)
    twice = _step("upgrad", present, scale=0.5, toy=_step("upgrad", present, scale=0.5))
    for a, b in zip(once.parameters(), twice.parameters()):
        assert torch.allclose(a.grad, b.grad)


@pytest.mark.parametrize("name", sorted(GRADIENT_BALANCERS))
def test_a_task_missing_from_the_batch_is_left_out(name):
    toy = _step(name, {"classification": True, "detection": False})
    shared_grad, head_grad = _task_gradients(Toy())["classification"]
    assert toy.heads["detection"].weight.grad is None
    assert torch.allclose(toy.heads["classification"].weight.grad, head_grad)
    assert torch.allclose(toy.shared.weight.grad, shared_grad)  # one task: exactly its own gradient


@pytest.mark.parametrize("name", sorted(GRADIENT_BALANCERS))
def test_each_gradient_balancer_trains_the_model_and_skips_a_missing_task(name, make_config):
    trainer = Trainer(make_config(f"mtl.balancer={name}", "train.epochs=1", "train.plots=false",
                                  "train.ema_decay=0"))
    assert trainer.balancer.owns_backward
    batches = iter(trainer.data.train)
    losses = trainer.training_step(next(batches))
    assert all(math.isfinite(v) for v in losses.values())
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = next(batches)
    batch.targets["detection"]["valid"][:] = False
    trainer.run_step(batch)
    heads = trainer.model.heads
    assert all(p.grad is None for p in heads["detection"].parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in heads["classification"].parameters())
    assert all(torch.isfinite(p.grad).all() for p in trainer.model.backbone.parameters() if p.grad is not None)
    trainer.update()
    assert trainer.position.updates == 2 and trainer.bad_steps == 0
    after = trainer.model.state_dict()
    for part in ("backbone.", "neck.", "heads.classification."):  # the trunk got the aggregated gradient
        assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith(part)), part
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    weights = trainer.balancer.weights()
    assert weights["detection"] == 0 and weights["classification"] > 0


def test_bf16_autocast_trains_with_a_gradient_balancer(make_config):
    trainer = Trainer(make_config("mtl.balancer=upgrad", "train.amp=bf16", "train.plots=false", "train.ema_decay=0"))
    trainer.run_step(next(iter(trainer.data.train)))
    assert all(p.grad is not None for p in trainer.model.neck.parameters())
    assert all(p.grad is not None for part in trainer.model.heads.values() for p in part.parameters())


@pytest.mark.parametrize(("overrides", "says"), [
    (["train.amp=fp16"], "does not support train.amp=fp16"),
    (["train.compile=true"], "does not support train.compile=true"),
])
def test_unsupported_setups_are_refused_in_one_line(overrides, says, make_config):
    with pytest.raises(ConfigError) as info:
        Trainer(make_config("mtl.balancer=pcgrad", *overrides))
    assert one_line(info.value) and says in str(info.value) and "mtl.balancer=pcgrad" in str(info.value)


def test_several_processes_are_refused_in_one_line(make_config, monkeypatch):
    monkeypatch.setattr(trainer_module.Processes, "from_env", classmethod(lambda cls: Processes(0, 2, 0)))
    with pytest.raises(ConfigError) as info:
        Trainer(make_config("mtl.balancer=upgrad"))
    assert one_line(info.value) and "does not support several processes" in str(info.value)
