"""Gradient-aggregation task balancers (``mtl.balancer`` = pcgrad, upgrad, mgda, imtl_g, aligned_mtl),
through TorchJD: instead of weighting the losses, they combine the per-task gradients.

Each head gets its own task's gradient; the shared trunk (backbone and pyramid) gets the per-task
Jacobian (one row per present task, from ``torchjd.autojac.mtl_backward`` over the pyramid outputs)
reduced to one direction by the aggregator (``jac_to_grad``), accumulated into ``.grad`` like a plain
backward, so ``train.accumulate`` works unchanged. Tasks absent from the batch are left out.
The trunk is back-propagated once per present task. Not supported yet: fp16 (its loss scale
would have to be applied per task), several processes (DDP) and ``torch.compile`` (the step calls
the model's ``features`` and ``heads_forward``, not the compiled module); see :func:`check_trainable`.
CAGrad is left out: TorchJD's needs its ``cagrad`` extra (cvxpy, clarabel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchjd.aggregation import IMTLG, MGDA, AlignedMTL, PCGrad, UPGrad, WeightedAggregator
from torchjd.autojac import jac_to_grad, mtl_backward

from vision_mtl.errors import ConfigError
from vision_mtl.mtl.balancers import Balancer

if TYPE_CHECKING:
    from vision_mtl.config import Config


class GradientBalancer(Balancer):
    """Runs the backward itself; its ``forward`` is the plain sum of the present tasks' losses (what
    is logged as ``loss``), and its weights are those the aggregator gave each task in the last step
    (0 for an absent task; the weights of PCGrad, MGDA, ... are those of the rows of the Jacobian)."""

    owns_backward = True

    def __init__(self, tasks: list[str], aggregator: WeightedAggregator):
        super().__init__(tasks)
        self.aggregator = aggregator
        self.register_buffer("last", torch.ones(len(tasks)), persistent=False)

    def task_weights(self, device: torch.device) -> Tensor:
        return torch.ones(len(self.tasks), device=device)

    def current(self) -> Tensor:
        return self.last

    def backward(self, task_losses: dict[str, Tensor], present: dict[str, Tensor], features: list[Tensor],
                 shared: list[nn.Parameter], scale: float = 1.0) -> None:
        """Accumulate into ``.grad``: each present task's gradient into its own head's parameters, and
        the aggregation of the tasks' Jacobian with respect to ``shared`` (the parameters ``features``
        come from that require a gradient), all times ``scale`` (1 / ``train.accumulate``)."""
        tasks = [task for task in self.tasks if bool(present[task])]  # one host sync a step
        if not tasks:
            return
        losses = [task_losses[task] * scale for task in tasks]
        shared = [p for p in shared if p.requires_grad]
        if not shared:  # the whole trunk frozen: nothing to aggregate, the heads train as usual
            torch.autograd.backward(losses)
            return
        # One task's row at a time: TorchJD's vmap over the rows fails under bf16 autocast
        # ("expected scalar type BFloat16 but found Float"); one row at a time also holds less memory.
        mtl_backward(losses, features=features, shared_params=shared, parallel_chunk_size=1)
        weights = jac_to_grad(shared, self.aggregator)
        last = torch.zeros_like(self.last)
        last[[self.tasks.index(task) for task in tasks]] = weights.detach().to(last)
        self.last = last


def independent(features: dict[int, Tensor]) -> dict[int, Tensor]:
    """The pyramid levels as new tensors none of which is computed from another, for the heads to read
    and :meth:`GradientBalancer.backward` to differentiate at: P6/P7 are computed from P5, and a task's
    gradient with respect to P5 itself would also hold the path through P6, counted twice."""
    return {level: feature.view_as(feature) for level, feature in features.items()}


def _aggregator(factory: Callable[[Config], WeightedAggregator]) -> Callable[[Config, list[str]], GradientBalancer]:
    return lambda cfg, tasks: GradientBalancer(tasks, factory(cfg))


GRADIENT_BALANCERS = {
    "pcgrad": _aggregator(lambda cfg: PCGrad()),  # Yu et al. 2020
    "upgrad": _aggregator(lambda cfg: UPGrad()),  # Quinton & Rey 2024
    "mgda": _aggregator(lambda cfg: MGDA()),  # Sener & Koltun 2018
    "imtl_g": _aggregator(lambda cfg: IMTLG()),  # Liu et al. 2021 (the gradient part of IMTL)
    "aligned_mtl": _aggregator(lambda cfg: AlignedMTL()),  # Senushkin et al. 2023
}


def check_trainable(cfg: Config, world: int) -> None:
    """Refuse, in one line, the training setups gradient balancers do not support yet."""
    name = f"mtl.balancer={cfg.mtl.balancer}"
    if cfg.train.amp == "fp16":
        raise ConfigError(f"{name} does not support train.amp=fp16 (the loss scale would have to be applied "
                          "per task); use train.amp=bf16, auto or off")
    if world > 1:
        raise ConfigError(f"{name} does not support several processes (torchrun, DDP) yet; train in one "
                          "process or use a loss-weighting balancer (fixed, uncertainty, dwa, rlw)")
    if cfg.train.compile:
        raise ConfigError(f"{name} does not support train.compile=true yet; set train.compile=false")
