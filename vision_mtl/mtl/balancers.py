"""Loss-weighting task balancers (``mtl.balancer``): each turns the per-task losses of a step into
the scalar to back-propagate.

A task with no labelled sample in the batch (``present[task]`` False) is left out of that step:
its term is zeroed with ``torch.where`` (no host sync), so it gives no gradient to the network nor
to the balancer, and the weights of the present tasks are not rescaled (as with fixed weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from vision_mtl.errors import ConfigError

if TYPE_CHECKING:
    from vision_mtl.config import Config


class Balancer(nn.Module):
    """Combines ``{task: loss}`` into one loss; its state (parameters, buffers) goes in ``last.pt``.
    One that ``owns_backward`` (``gradients.py``) back-propagates the losses itself with ``backward``."""

    owns_backward = False
    needs_features = False  # reads the shared pyramid features (the trainer then passes them)

    def __init__(self, tasks: list[str]):
        super().__init__()
        self.tasks = list(tasks)

    def forward(self, task_losses: dict[str, Tensor], present: dict[str, Tensor],
                features: list[Tensor] | None = None) -> Tensor:
        """The loss to back-propagate; ``present[task]`` is a 0-d bool tensor (task labelled in the batch);
        ``features``: the shared pyramid levels the losses were computed from, for those that need them."""
        weights = self.task_weights(task_losses[self.tasks[0]].device)
        terms = [self.term(weights[i], task_losses[task], i) for i, task in enumerate(self.tasks)]
        return sum(torch.where(present[task], term, torch.zeros_like(term)) for task, term in zip(self.tasks, terms))

    def term(self, weight: Tensor, loss: Tensor, index: int) -> Tensor:
        """Task ``index``'s contribution to the total."""
        return weight * loss

    def task_weights(self, device: torch.device) -> Tensor:
        """This step's weight of each task, in ``tasks`` order."""
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """The current weights, for logging (one host sync)."""
        return dict(zip(self.tasks, self.current().tolist()))

    def current(self) -> Tensor:
        """The weights last used (or about to be used), without drawing new ones."""
        return self.task_weights(torch.device("cpu"))

    def epoch_end(self, epoch_losses: dict[str, float]) -> None:
        """Called after each epoch with each task's mean training loss; most balancers ignore it."""


class FixedWeights(Balancer):
    """Static ``train.loss_weights``: total = sum_t w_t * L_t."""

    def __init__(self, tasks: list[str], weights: dict[str, float]):
        super().__init__(tasks)
        self.register_buffer("fixed", torch.tensor([float(weights[t]) for t in tasks]), persistent=False)

    def task_weights(self, device: torch.device) -> Tensor:
        return self.fixed.to(device)


class UncertaintyWeights(Balancer):
    """Kendall et al. 2018, in the regression form LibMTL's UW uses (up to its factor 1/2): a learnable
    log-variance s_t per task, total = sum_t exp(-s_t) * L_t + s_t; the weight exp(-s_t) falls as a
    task's loss grows (the optimum is s_t = log L_t). s starts at 0 (weight 1)."""

    def __init__(self, tasks: list[str]):
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(tasks)))

    def task_weights(self, device: torch.device) -> Tensor:
        return torch.exp(-self.log_vars).to(device)

    def term(self, weight: Tensor, loss: Tensor, index: int) -> Tensor:
        return weight * loss + self.log_vars[index]

    def current(self) -> Tensor:
        return torch.exp(-self.log_vars.detach())


class DynamicWeightAverage(Balancer):
    """Liu et al. 2019 (DWA): w_t = K * softmax_t(r_t / T), r_t = L_t(e-1) / L_t(e-2), the ratio of
    the last two epochs' mean losses: a task whose loss fell less gets more weight. Equal weights (1)
    for the first two epochs. The weights sum to K, the number of tasks."""

    def __init__(self, tasks: list[str], temperature: float):
        super().__init__(tasks)
        self.temperature = temperature
        self.register_buffer("history", torch.zeros(2, len(tasks)))  # epoch e-2, e-1 mean losses
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("current_weights", torch.ones(len(tasks)))

    def task_weights(self, device: torch.device) -> Tensor:
        return self.current_weights.to(device)

    def epoch_end(self, epoch_losses: dict[str, float]) -> None:
        losses = torch.tensor([float(epoch_losses.get(t, 0.0)) for t in self.tasks], device=self.history.device)
        self.history.copy_(torch.stack([self.history[1], losses]))
        self.epochs_seen += 1
        if self.epochs_seen >= 2:
            earlier, last = self.history
            ratio = torch.where(earlier > 0, last / earlier.clamp_min(1e-12), torch.ones_like(last))
            self.current_weights.copy_(len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0))


class RandomLossWeights(Balancer):
    """Lin et al. 2021 (RLW): each step, weights = K * softmax(z), z ~ N(0, I) drawn from the global
    torch RNG of the losses' device (saved in ``last.pt``, so a resumed run redraws the same). The
    weights sum to K, the number of tasks (LibMTL's sum to 1), so their scale matches fixed weights of 1."""

    def __init__(self, tasks: list[str]):
        super().__init__(tasks)
        self.register_buffer("last", torch.ones(len(tasks)), persistent=False)

    def task_weights(self, device: torch.device) -> Tensor:
        self.last = len(self.tasks) * torch.softmax(torch.randn(len(self.tasks), device=device), dim=0)
        return self.last

    def current(self) -> Tensor:
        return self.last


class GradNorm(Balancer):
    """Chen et al. 2018: learned weights w_t (positive, summing to K, the number of tasks: w = K softmax(z))
    moved to equalise the tasks' weighted gradient norms G_t = w_t ||dL_t/dF|| towards mean(G) r_t^alpha,
    r_t the task's loss ratio L_t / L_t(0) relative to the mean ratio: a task with a smaller gradient
    or a slower loss decrease gets more weight. F is the shared pyramid features, not the last shared
    layer's weights: the same "last shared representation", its gradient costs one pass through the
    heads only, and it stays defined whatever the sharing scheme (LibMTL's ``rep_grad`` choice).
    The network gets sum_t w_t L_t with the weights held constant; the weights get only the gradient
    of sum_t |G_t - target_t| (norms and targets held constant), added with value 0, so the logged
    loss is the weighted sum. L_t(0) is each task's first loss on a batch that labels it (under DDP,
    each process's own). A task absent from the batch has no term, but its weight still shifts with
    the others' through the softmax (the paper's renormalisation does the same)."""

    needs_features = True

    def __init__(self, tasks: list[str], alpha: float):
        super().__init__(tasks)
        self.alpha = alpha
        self.logits = nn.Parameter(torch.zeros(len(tasks)))
        self.register_buffer("initial", torch.zeros(len(tasks)))  # L_t(0); 0 until the task is first seen

    def task_weights(self, device: torch.device) -> Tensor:
        return (len(self.tasks) * torch.softmax(self.logits, dim=0)).to(device)

    def current(self) -> Tensor:
        return self.task_weights(self.logits.device).detach()

    def forward(self, task_losses: dict[str, Tensor], present: dict[str, Tensor],
                features: list[Tensor] | None = None) -> Tensor:
        if features is None:
            raise ValueError("GradNorm needs the shared features the losses were computed from")
        losses = torch.stack([task_losses[task] for task in self.tasks])
        mask = torch.stack([present[task] for task in self.tasks])
        weights = self.task_weights(losses.device)
        total = torch.where(mask, weights.detach() * losses, torch.zeros_like(losses)).sum()
        if not torch.is_grad_enabled():
            return total
        with torch.no_grad():
            self.initial.copy_(torch.where(mask & (self.initial == 0), losses.to(self.initial), self.initial))
            norms = torch.stack([_gradient_norm(task_losses[task], features) for task in self.tasks]).to(losses)
        balance = self._balance_loss(weights, norms, losses.detach(), mask)
        return total + (balance - balance.detach())

    def _balance_loss(self, weights: Tensor, norms: Tensor, losses: Tensor, mask: Tensor) -> Tensor:
        """sum over present tasks of |w_t g_t - mean(w g) r_t^alpha|, its target held constant."""
        count = mask.sum().clamp_min(1)
        initial = self.initial.to(losses)
        ratios = torch.where(initial > 0, losses / initial.clamp_min(1e-12), torch.ones_like(losses))
        ratios = torch.where(mask, ratios, torch.zeros_like(ratios))
        relative = (ratios / (ratios.sum() / count).clamp_min(1e-12)).clamp_min(0)
        norms = weights * norms
        target = (torch.where(mask, norms, torch.zeros_like(norms)).sum() / count * relative ** self.alpha).detach()
        return torch.where(mask, (norms - target).abs(), torch.zeros_like(norms)).sum()


def _gradient_norm(loss: Tensor, features: list[Tensor]) -> Tensor:
    """||d loss / d features|| (all levels together), without a graph: a constant for the weights' loss."""
    if not loss.requires_grad:
        return torch.zeros((), device=loss.device)
    grads = [g for g in torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True) if g is not None]
    return torch.sqrt(sum(g.float().square().sum() for g in grads)) if grads else torch.zeros((), device=loss.device)


@contextlib.contextmanager
def captured_features(neck: nn.Module, enabled: bool) -> Iterator[dict[int, Tensor]]:
    """The pyramid levels ``neck`` outputs in the forward run inside, made :func:`independent`, for a
    balancer that reads them (GradNorm) while the forward goes through DDP (not the model's ``features``)."""
    captured: dict[int, Tensor] = {}
    if not enabled:
        yield captured
        return

    def keep(module: nn.Module, inputs: tuple, output: dict[int, Tensor]) -> dict[int, Tensor]:
        captured.update(independent(output))
        return dict(captured)

    handle = neck.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def independent(features: dict[int, Tensor]) -> dict[int, Tensor]:
    """The pyramid levels as new tensors none of which is computed from another, for the heads to read
    and a balancer to differentiate at: P6/P7 are computed from P5, and a task's gradient with respect
    to P5 itself would also hold the path through P6, counted twice."""
    return {level: feature.view_as(feature) for level, feature in features.items()}


BALANCERS = {
    "fixed": lambda cfg, tasks: FixedWeights(tasks, {t: getattr(cfg.train.loss_weights, t) for t in tasks}),
    "uncertainty": lambda cfg, tasks: UncertaintyWeights(tasks),
    "dwa": lambda cfg, tasks: DynamicWeightAverage(tasks, cfg.mtl.dwa_temperature),
    "rlw": lambda cfg, tasks: RandomLossWeights(tasks),
    "gradnorm": lambda cfg, tasks: GradNorm(tasks, cfg.mtl.gradnorm_alpha),
}


def build_balancer(cfg: Config, tasks: list[str]) -> Balancer:
    """The balancer ``cfg.mtl.balancer`` names, for ``tasks``."""
    name = cfg.mtl.balancer
    if name not in BALANCERS:
        raise ConfigError(f"mtl.balancer={name!r} is not a balancer; choose one of {', '.join(BALANCERS)}")
    return BALANCERS[name](cfg, tasks)
