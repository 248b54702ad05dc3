"""Task balancers (mtl.balancer) on hand-made losses, and each one inside the Trainer."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import one_line
from vision_mtl.config import load_config
from vision_mtl.errors import ConfigError
from vision_mtl.mtl import BALANCERS, build_balancer
from vision_mtl.training.precision import Precision
from vision_mtl.training.trainer import Trainer
from vision_mtl.utils import runtime

TASKS = ["classification", "detection", "segmentation"]


def _losses(*values: float) -> dict[str, torch.Tensor]:
    return {task: torch.tensor(v, requires_grad=True) for task, v in zip(TASKS, values)}


def _present(*flags: bool) -> dict[str, torch.Tensor]:
    return {task: torch.tensor(flag) for task, flag in zip(TASKS, flags)}


def _balancer(name: str, *overrides: str, tasks: list[str] = TASKS):
    return build_balancer(load_config(None, [f"mtl.balancer={name}", *overrides]), tasks)


def test_fixed_reproduces_the_static_weighted_sum_exactly():
    cfg = load_config(None, ["train.loss_weights.classification=2", "train.loss_weights.detection=0.3",
                             "train.loss_weights.segmentation=1.7"])
    balancer = build_balancer(cfg, TASKS)
    losses = _losses(0.731, 1.9137, 0.40021)
    inline = sum(getattr(cfg.train.loss_weights, task) * loss for task, loss in losses.items())
    assert torch.equal(balancer(losses, _present(True, True, True)), inline)
    assert balancer.weights() == pytest.approx({"classification": 2.0, "detection": 0.3, "segmentation": 1.7})


def test_uncertainty_learns_a_smaller_weight_for_the_larger_loss():
    """Kendall et al.: minimising exp(-s) L + s drives s towards log L, so the weight exp(-s) towards 1/L."""
    balancer = _balancer("uncertainty", tasks=TASKS[:2])
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.05)
    targets = {"classification": 4.0, "detection": 0.25}
    for _ in range(600):
        optimizer.zero_grad()
        balancer({t: torch.tensor(v) for t, v in targets.items()}, _present(True, True)).backward()
        optimizer.step()
    weights = balancer.weights()
    assert all(math.isfinite(w) and w > 0 for w in weights.values())
    assert weights["classification"] < weights["detection"]
    assert balancer.log_vars[0] > balancer.log_vars[1]
    assert balancer.log_vars.detach() == pytest.approx(torch.log(torch.tensor([4.0, 0.25])), abs=0.05)


def test_dwa_is_equal_for_two_epochs_then_favours_the_task_whose_loss_fell_less():
    balancer = _balancer("dwa", "mtl.dwa_temperature=2", tasks=TASKS[:2])
    assert balancer.weights() == {"classification": 1.0, "detection": 1.0}
    balancer.epoch_end({"classification": 2.0, "detection": 2.0})
    assert balancer.weights() == {"classification": 1.0, "detection": 1.0}  # epoch 2 still equal
    balancer.epoch_end({"classification": 1.0, "detection": 1.8})  # classification fell to 50 %, detection to 90 %
    weights = balancer.weights()
    expected = 2 * torch.softmax(torch.tensor([0.5, 0.9]) / 2, dim=0)
    assert [weights["classification"], weights["detection"]] == pytest.approx(expected.tolist())
    assert weights["detection"] > weights["classification"] and sum(weights.values()) == pytest.approx(2.0)
    losses = _losses(3.0, 5.0)
    total = balancer({t: losses[t] for t in TASKS[:2]}, _present(True, True))
    assert total.item() == pytest.approx(3.0 * weights["classification"] + 5.0 * weights["detection"])


def test_rlw_weights_are_positive_sum_to_the_task_count_and_follow_the_seed():
    balancer = _balancer("rlw")
    draws = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        balancer(_losses(1.0, 1.0, 1.0), _present(True, True, True))
        draws.append(list(balancer.weights().values()))
    for weights in draws:
        assert all(w > 0 for w in weights) and sum(weights) == pytest.approx(len(TASKS))
    assert draws[0] == draws[1] and draws[0] != draws[2]
    balancer(_losses(1.0, 1.0, 1.0), _present(True, True, True))
    assert list(balancer.weights().values()) != draws[2]  # a new draw every step


def _gradnorm_steps(offsets: list[tuple[float, float]], scales: tuple[float, float], alpha: float = 1.5,
                    steps: int = 300):
    """GradNorm on two tasks L_t = scale_t * (u . F) + offset_t (gradient norm |scale_t| |u|, loss
    value set by the offset), its weights alone trained (Adam); returns it."""
    balancer = _balancer("gradnorm", f"mtl.gradnorm_alpha={alpha}", tasks=TASKS[:2])
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.02)
    features = torch.ones(3, requires_grad=True)
    for step in range(steps):
        offset = offsets[min(step, len(offsets) - 1)]
        losses = {task: scale * features.sum() + shift for task, scale, shift in zip(TASKS, scales, offset)}
        optimizer.zero_grad()
        balancer(losses, _present(True, True), [features]).backward()
        optimizer.step()
    return balancer


def test_gradnorm_raises_the_weight_of_the_task_with_the_smaller_gradient():
    """Equal loss ratios: GradNorm equalises w_t |grad L_t|; classification's gradient is 4x smaller."""
    balancer = _gradnorm_steps([(0.0, 0.0)], scales=(0.5, 2.0))
    weights = balancer.weights()
    assert all(math.isfinite(w) and w > 0 for w in weights.values()) and sum(weights.values()) == pytest.approx(2.0)
    assert weights["classification"] / weights["detection"] == pytest.approx(4.0, rel=0.1)


def test_gradnorm_raises_the_weight_of_the_task_whose_loss_fell_less():
    """Equal gradients; detection's loss fell to 1/3 of its start, classification's not at all: relative
    inverse rates r = (1.5, 0.5), targets mean(G) r^alpha; with alpha = 1 they sum to K, so the weights
    reach them: (1.5, 0.5)."""
    balancer = _gradnorm_steps([(0.0, 0.0), (0.0, -2.0)], scales=(1.0, 1.0), alpha=1.0)  # L(0) = 3 for both
    assert balancer.initial.tolist() == [3.0, 3.0]
    weights = balancer.weights()
    assert [weights["classification"], weights["detection"]] == pytest.approx([1.5, 0.5], rel=0.05)


def test_gradnorm_weights_get_no_gradient_from_the_network_loss_and_give_none_to_it():
    """The features receive exactly sum_t w_t dL_t/dF (weights as constants); the logged value is that
    weighted sum; the weights' own loss reaches only the weights."""
    balancer = _balancer("gradnorm", tasks=TASKS[:2])
    with torch.no_grad():
        balancer.logits.copy_(torch.tensor([0.3, -0.2]))
    balancer({t: torch.tensor(1.0) + 0 * torch.ones(2, requires_grad=True).sum() for t in TASKS[:2]},
             _present(True, True), [torch.ones(2, requires_grad=True)])  # records L(0)
    features = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = {"classification": 3 * features[0], "detection": features @ torch.tensor([1.0, 0.25])}
    weights = balancer.weights()
    total = balancer(losses, _present(True, True), [features])
    total.backward()
    assert total.item() == pytest.approx(3.0 * weights["classification"] + 1.5 * weights["detection"])
    expected = weights["classification"] * torch.tensor([3.0, 0.0]) + weights["detection"] * torch.tensor([1.0, 0.25])
    assert torch.allclose(features.grad, expected)
    # The weights' gradient: that of sum_t |w_t g_t - mean(w g) r_t^alpha| alone (targets constant),
    # with g = |dL_t/dF| = (3, |(1, 0.25)|) and r = (3, 1.5) / 2.25 (the first losses were 1).
    logits = torch.tensor([0.3, -0.2], requires_grad=True)
    w, g = 2 * torch.softmax(logits, dim=0), torch.tensor([3.0, math.hypot(1.0, 0.25)])
    target = ((w * g).mean() * (torch.tensor([3.0, 1.5]) / 2.25) ** 1.5).detach()
    (w * g - target).abs().sum().backward()
    assert torch.allclose(balancer.logits.grad, logits.grad) and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_a_task_missing_from_the_batch_gets_no_gradient_and_no_term(name):
    balancer = _balancer(name)
    for _ in range(2):  # dwa: past its two equal epochs
        balancer.epoch_end({"classification": 1.0, "detection": 0.5, "segmentation": 2.0})
    losses = _losses(0.8, 1.3, 2.1)
    torch.manual_seed(0)
    total = balancer(losses, _present(True, False, True), list(losses.values()))  # gradnorm: the losses as features
    total.backward()
    weights = balancer.weights()
    extra = {t: 0.0 for t in TASKS}
    if name == "uncertainty":
        extra = {t: -math.log(w) for t, w in weights.items()}  # the s_t term
        assert balancer.log_vars.grad[1] == 0 and (balancer.log_vars.grad[[0, 2]] != 0).all()
    expected = sum(weights[t] * losses[t].item() + extra[t] for t in ("classification", "segmentation"))
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert losses["detection"].grad.item() == 0
    assert losses["classification"].grad.item() == pytest.approx(weights["classification"], rel=1e-6)


def test_unknown_balancer_is_one_line_listing_the_names():
    with pytest.raises(ConfigError) as info:
        _balancer("nashmtl")
    assert one_line(info.value) and "mtl.balancer='nashmtl'" in str(info.value)
    assert all(name in str(info.value) for name in BALANCERS)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_each_balancer_trains_logs_its_weights_and_survives_a_resume(name, make_config):
    trainer = Trainer(make_config(f"mtl.balancer={name}", "train.epochs=1", "train.max_steps_per_epoch=2",
                                  "train.log_every=1", "train.plots=false", "train.ema_decay=0"))
    logged, step = [], trainer.monitor.step
    trainer.monitor.step = lambda bar, update, images, losses, lr: (logged.append(losses),
                                                                  step(bar, update, images, losses, lr))
    trainer.fit()
    assert len(logged) == 2 and all(math.isfinite(v) for losses in logged for v in losses.values())
    keys = {f"weight/{task}" for task in TASKS}
    assert keys <= set(logged[0]) and keys <= set(trainer.monitor.history.rows[-1])
    state = trainer.balancer.state_dict()
    if name == "uncertainty":  # learned: moved off its start, and optimised by the trainer's optimiser
        assert (state["log_vars"] != 0).all()
        log_vars = trainer.balancer.log_vars
        group = next(g for g in trainer.optimizer.param_groups if any(p is log_vars for p in g["params"]))
        assert group["weight_decay"] == 0 and len(group["params"]) == 1
    if name == "dwa":
        assert state["epochs_seen"] == 1 and (state["history"][1] > 0).all()
    if name == "gradnorm":  # learned through the trainer's optimiser, from the first losses it saw
        assert (state["logits"] != 0).all() and (state["initial"] > 0).all()
    resumed = Trainer.resume(trainer.run_dir, ["train.epochs=2"])
    assert resumed.balancer.state_dict().keys() == state.keys()
    assert all(torch.equal(resumed.balancer.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ConfigError, match="mtl.balancer cannot change when resuming"):
        Trainer.resume(trainer.run_dir, ["mtl.balancer=" + ("fixed" if name != "fixed" else "rlw")])


def test_gradnorm_trains_with_accumulation_and_reads_bf16_features(make_config, monkeypatch):
    trainer = Trainer(make_config("mtl.balancer=gradnorm", "train.accumulate=2", "train.epochs=1",
                                  "train.max_steps_per_epoch=4", "train.plots=false", "train.ema_decay=0"))
    trainer.fit()
    weights = trainer.balancer.weights()
    assert trainer.position.updates == 2 and all(math.isfinite(w) and w > 0 for w in weights.values())
    assert sum(weights.values()) == pytest.approx(3.0) and (trainer.balancer.logits != 0).all()
    # bf16 (a full bf16 CPU run skips steps for the pyramid's P7 gradient, with any balancer: precision.py)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)  # bf16 on every CPU (emulated where not native)
    trainer.precision = Precision("bf16", trainer.device)
    assert trainer.precision.name == "bf16"
    trainer.run_step(next(iter(trainer.data.train)))
    grad = trainer.balancer.logits.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
