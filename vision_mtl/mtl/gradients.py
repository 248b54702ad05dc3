"""Gradient-aggregation task balancers (``mtl.balancer`` = pcgrad, upgrad, mgda, imtl_g, aligned_mtl,
cagrad), through TorchJD: instead of weighting the losses, they combine the per-task gradients.

Each head gets its own task's gradient; the shared trunk (backbone and pyramid) gets the per-task
Jacobian (one row per present task, from ``torchjd.autojac.mtl_backward`` over the pyramid outputs)
reduced to one direction by the aggregator (``jac_to_grad``), accumulated into ``.grad`` like a plain
backward, so ``train.accumulate`` works unchanged. Tasks absent from the batch are left out.
The trunk is back-propagated once per present task.

Several processes: the step bypasses DDP (it calls the model's ``features`` and ``heads_forward``),
so the Jacobian rows are averaged over the processes here, once, before the aggregation (every
process then aggregates the same matrix), and so are the heads' gradients; a task present on some
process only keeps its row everywhere (zero where absent, as DDP's mean of the summed losses would).
fp16: the rows are unscaled and checked finite before the aggregation; a non-finite one makes the
whole step non-finite, so the trainer skips it (and the scaler lowers its scale).
Not supported: ``torch.compile`` (the step does not go through the compiled module).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchjd.aggregation import IMTLG, MGDA, AlignedMTL, CAGrad, PCGrad, UPGrad, WeightedAggregator
from torchjd.autojac import jac_to_grad, mtl_backward

from vision_mtl.errors import ConfigError
from vision_mtl.mtl.balancers import Balancer
from vision_mtl.utils.distributed import Processes

if TYPE_CHECKING:
    from vision_mtl.config import Config


class GradientBalancer(Balancer):
    """Runs the backward itself; its ``forward`` is the plain sum of the present tasks' losses (what
    is logged as ``loss``), and its weights are those the aggregator gave each task in the last step
    (0 for an absent task; the weights of PCGrad, MGDA, ... are those of the rows of the Jacobian)."""

    owns_backward = True
    needs_features = True

    def __init__(self, tasks: list[str], aggregator: WeightedAggregator):
        super().__init__(tasks)
        self.aggregator = aggregator
        self.register_buffer("last", torch.ones(len(tasks)), persistent=False)

    def task_weights(self, device: torch.device) -> Tensor:
        return torch.ones(len(self.tasks), device=device)

    def current(self) -> Tensor:
        return self.last

    def backward(self, task_losses: dict[str, Tensor], present: dict[str, Tensor], features: list[Tensor],
                 shared: list[nn.Parameter], heads: list[nn.Parameter], scale: float = 1.0,
                 loss_scale: float = 1.0, processes: Processes = Processes()) -> None:
        """Accumulate into ``.grad``: each present task's gradient into its own head's parameters
        (``heads``: all the parameters outside the trunk), and the aggregation of the tasks' Jacobian
        with respect to ``shared`` (the parameters ``features`` come from that require a gradient),
        all times ``scale`` (1 / ``train.accumulate``) and ``loss_scale`` (fp16: the rows are unscaled
        for the aggregation, the result scaled back like the heads' gradients), averaged over ``processes``."""
        here = [bool(present[task]) for task in self.tasks]  # one host sync a step
        anywhere = [n > 0 for n in processes.sum([float(flag) for flag in here])]
        if not any(anywhere):
            return
        losses = [task_losses[task] * (scale * loss_scale) for task, flag in zip(self.tasks, here) if flag]
        shared = [p for p in shared if p.requires_grad]
        if shared and losses:
            # One task's row at a time: TorchJD's vmap over the rows fails under bf16 autocast
            # ("expected scalar type BFloat16 but found Float"); one row at a time also holds less memory.
            mtl_backward(losses, features=features, shared_params=shared, parallel_chunk_size=1)
        elif losses:  # the whole trunk frozen: nothing to aggregate, the heads train as usual
            torch.autograd.backward(losses)
        if shared:
            rows = [i for i, flag in enumerate(here) if flag]
            self._aggregate(shared, rows, [i for i, flag in enumerate(anywhere) if flag], loss_scale, processes)
        _average_gradients(heads, processes)

    def _aggregate(self, shared: list[nn.Parameter], rows: list[int], tasks: list[int], loss_scale: float,
                   processes: Processes) -> None:
        """The Jacobian in ``.jac`` (this process's rows, of tasks ``rows``) completed to the rows of
        ``tasks`` (those present on some process), averaged over the processes, unscaled and, when
        finite, aggregated into ``.grad``; when not, ``.grad`` is made non-finite so the trainer skips the step."""
        for param in shared:
            if rows != tasks:  # a task absent here but present on another process: a zero row
                jac = param.new_zeros((len(tasks), *param.shape))
                if rows:
                    jac[[tasks.index(i) for i in rows]] = param.jac
                param.jac = jac
            processes.average_(param.jac)
            if loss_scale != 1.0:
                param.jac.div_(loss_scale)
        if not bool(torch.stack([torch.isfinite(param.jac).all() for param in shared]).all()):
            for param in shared:
                del param.jac
                param.grad = torch.full_like(param, torch.nan)
            return
        before = [param.grad for param in shared]
        for param in shared:
            param.grad = None
        weights = jac_to_grad(shared, self.aggregator)
        for param, grad in zip(shared, before):
            update = param.grad if loss_scale == 1.0 else param.grad * loss_scale
            param.grad = update if grad is None else grad.add_(update)
        last = torch.zeros_like(self.last)
        last[tasks] = weights.detach().to(last)
        self.last = last


def _average_gradients(params: list[nn.Parameter], processes: Processes) -> None:
    """The gradients of ``params`` averaged over the processes (DDP's job, here bypassed); one
    without a gradient on some process only counts as zero there."""
    if processes.world == 1:
        return
    params = [p for p in params if p.requires_grad]
    has = processes.sum([float(p.grad is not None) for p in params])
    for param, count in zip(params, has):
        if count:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            processes.average_(param.grad)


def _aggregator(factory: Callable[[Config], WeightedAggregator]) -> Callable[[Config, list[str]], GradientBalancer]:
    return lambda cfg, tasks: GradientBalancer(tasks, factory(cfg))


GRADIENT_BALANCERS = {
    "pcgrad": _aggregator(lambda cfg: PCGrad()),  # Yu et al. 2020
    "upgrad": _aggregator(lambda cfg: UPGrad()),  # Quinton & Rey 2024
    "mgda": _aggregator(lambda cfg: MGDA()),  # Sener & Koltun 2018
    "imtl_g": _aggregator(lambda cfg: IMTLG()),  # Liu et al. 2021 (the gradient part of IMTL)
    "aligned_mtl": _aggregator(lambda cfg: AlignedMTL()),  # Senushkin et al. 2023
    "cagrad": _aggregator(lambda cfg: CAGrad(c=cfg.mtl.cagrad_c)),  # Liu et al. 2021; TorchJD's cagrad extra
}


def check_trainable(cfg: Config) -> None:
    """Refuse, in one line, the training setups the balancers that read the features (gradient
    balancers, GradNorm) do not support."""
    if cfg.train.compile:
        raise ConfigError(f"mtl.balancer={cfg.mtl.balancer} does not support train.compile=true (it reads the "
                          "pyramid features, which the compiled model does not expose); set train.compile=false")
