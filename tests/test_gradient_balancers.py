"""Gradient-aggregation balancers (mtl.balancer = pcgrad, upgrad, ...): the update direction on a toy
two-task problem with hand-made, conflicting gradients, in two processes and under a loss scale, and
each one inside the Trainer."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from torch import nn

from conftest import one_line
from vision_mtl.config import load_config
from vision_mtl.errors import ConfigError
from vision_mtl.mtl import GRADIENT_BALANCERS, build_balancer, independent
from vision_mtl.training.trainer import Trainer
from vision_mtl.utils import runtime
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

    def losses(self, inputs: torch.Tensor | None = None, labelled: dict[str, list[bool]] | None = None,
               count: int = 1) -> tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]:
        """The features and, per task, the sum over the ``labelled`` rows of ``inputs`` (default: x) / ``count``."""
        inputs = torch.tensor([[1.0, 0.0]]) if inputs is None else inputs
        f5 = self.shared(inputs)
        features = independent({5: f5, 6: 2 * f5})
        losses = {}
        for task, head in self.heads.items():
            mask = torch.tensor(labelled[task] if labelled else [True] * len(inputs))
            losses[task] = torch.where(mask, (head(features[5]) + head(features[6])).squeeze(1), 0).sum() / count
        return features, losses


def _task_gradients(toy: Toy) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each task's own (shared weight, head weight) gradient, by plain autograd."""
    _, losses = toy.losses()
    return {task: torch.autograd.grad(loss, [toy.shared.weight, toy.heads[task].weight], retain_graph=True)
            for task, loss in losses.items()}


def _step(name: str, present: dict[str, bool], scale: float = 1.0, toy: Toy | None = None,
          loss_scale: float = 1.0, balancer=None) -> Toy:
    toy = toy or Toy()
    balancer = balancer or build_balancer(load_config(None, [f"mtl.balancer={name}"]), TASKS)
    features, losses = toy.losses()
    balancer.backward(losses, {t: torch.tensor(p) for t, p in present.items()}, list(features.values()),
                      list(toy.shared.parameters()), list(toy.heads.parameters()), scale=scale, loss_scale=loss_scale)
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
    # One task: exactly its own gradient (CAGrad's: times 1 + c, its update g0 + c |g0| gw / |gw| with gw = g0).
    factor = 1 + load_config(None, []).mtl.cagrad_c if name == "cagrad" else 1.0
    assert torch.allclose(toy.shared.weight.grad, factor * shared_grad)


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


def test_bf16_autocast_trains_with_a_gradient_balancer(make_config, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)  # bf16 on every CPU (emulated where not native)
    trainer = Trainer(make_config("mtl.balancer=upgrad", "train.amp=bf16", "train.plots=false", "train.ema_decay=0"))
    assert trainer.precision.name == "bf16"
    trainer.run_step(next(iter(trainer.data.train)))
    assert all(p.grad is not None for p in trainer.model.neck.parameters())
    assert all(p.grad is not None for part in trainer.model.heads.values() for p in part.parameters())


def test_fp16_rows_are_unscaled_before_the_aggregation_and_the_result_scaled_back():
    """Under a loss scale, the aggregator sees the true (unscaled) Jacobian; .grad holds the scaled
    result, like the heads' gradients and any plain backward, for the scaler's unscale_ to undo."""
    both = {"classification": True, "detection": True}
    balancer = build_balancer(load_config(None, ["mtl.balancer=upgrad"]), TASKS)
    seen = []
    balancer.aggregator.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    scaled, plain = _step("upgrad", both, loss_scale=1024.0, balancer=balancer), _step("upgrad", both)
    rows = torch.stack([g.flatten() for g, _ in _task_gradients(Toy()).values()])
    assert len(seen) == 1 and torch.allclose(seen[0], rows)
    for a, b in zip(scaled.parameters(), plain.parameters()):
        assert torch.allclose(a.grad, 1024.0 * b.grad)


def test_an_overflowing_row_is_not_aggregated_and_makes_the_step_non_finite():
    balancer = build_balancer(load_config(None, ["mtl.balancer=upgrad"]), TASKS)
    seen = []
    balancer.aggregator.register_forward_pre_hook(lambda module, inputs: seen.append(inputs))
    toy = _step("upgrad", {"classification": True, "detection": True}, loss_scale=3e38, balancer=balancer)
    assert seen == [] and torch.isnan(toy.shared.weight.grad).all() and not hasattr(toy.shared.weight, "jac")
    assert torch.equal(balancer.last, torch.ones(2))  # the weights of the last good step stay


def test_a_loss_scale_trains_and_an_overflow_skips_the_step_and_lowers_the_scale(make_config):
    """fp16's GradScaler path, run on CPU (fp16 itself needs CUDA): a CPU scaler on an fp32 trainer (not
    bf16, whose CPU backward now and then gives a non-finite P7 gradient by itself, docs/benchmarks.md)."""
    trainer = Trainer(make_config("mtl.balancer=upgrad", "train.amp=off", "train.plots=false", "train.ema_decay=0"))
    trainer.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    batches = iter(trainer.data.train)
    trainer.training_step(next(batches))  # the scaled losses overflow
    assert trainer.position.updates == 0 and trainer.bad_steps == 0 and trainer.precision.loss_scale() == 2.0**126
    trainer.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.training_step(next(batches))
    assert trainer.position.updates == 1 and trainer.precision.loss_scale() == 2.0**10
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("backbone."))


# Two processes, one sample each; detection is labelled on process 0 only.
INPUTS = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
LABELLED = {"classification": [True, True], "detection": [True, False]}


class ThreadedProcesses(Processes):
    """Two processes played by two threads: ``sum`` and ``average_`` add the ranks' values in rank
    order, as an all-reduce would (the real gloo run is in test_training_ddp.py)."""

    slots: list = [None, None]
    barrier = threading.Barrier(2)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        self.slots[self.rank] = tensor.clone()
        self.barrier.wait()
        total = self.slots[0] + self.slots[1]
        self.barrier.wait()
        return total

    def sum(self, values: list[float]) -> list[float]:
        return self._all_reduce(torch.tensor(values, dtype=torch.float64)).tolist()

    def average_(self, tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            tensor.copy_(self._all_reduce(tensor.div_(self.world)))


def _gradients(rank: int | None = None) -> dict[str, torch.Tensor]:
    """The toy step's gradients and weights on process ``rank``'s sample (None: one process, both samples)."""
    toy, balancer = Toy(), build_balancer(load_config(None, ["mtl.balancer=upgrad"]), TASKS)
    rows = slice(None) if rank is None else slice(rank, rank + 1)
    labelled = {task: flags[rows] for task, flags in LABELLED.items()}
    features, losses = toy.losses(INPUTS[rows], labelled, count=2 if rank is None else 1)
    present = {task: torch.tensor(any(flags)) for task, flags in labelled.items()}
    processes = Processes() if rank is None else ThreadedProcesses(rank, 2, rank)
    balancer.backward(losses, present, list(features.values()), list(toy.shared.parameters()),
                      list(toy.heads.parameters()), processes=processes)
    return {"last": balancer.last, **{name: p.grad for name, p in toy.named_parameters()}}


def test_two_processes_aggregate_the_averaged_rows_like_one_process_on_both_samples():
    """Each row averaged over the processes once, before the aggregation (a task absent on one process
    counts zero there, as DDP averages the summed losses): both processes get the gradients one process
    gets on the two samples with each loss summed over its labelled samples / 2."""
    ranks: list[dict] = [{}, {}]
    threads = [threading.Thread(target=lambda r=r: ranks[r].update(_gradients(r))) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    expected = _gradients()
    assert ranks[0].keys() == ranks[1].keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(ranks[1][key], ranks[0][key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(ranks[0][key], value, msg=key)
    assert (expected["last"] > 0).all() and expected["heads.detection.weight"].abs().sum() > 0


@pytest.mark.parametrize("name", ["pcgrad", "gradnorm"])
def test_compile_is_refused_in_one_line(name, make_config):
    with pytest.raises(ConfigError) as info:
        Trainer(make_config(f"mtl.balancer={name}", "train.compile=true"))
    assert one_line(info.value) and "does not support train.compile=true" in str(info.value)
    assert f"mtl.balancer={name}" in str(info.value)
