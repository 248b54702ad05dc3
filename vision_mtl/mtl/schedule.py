"""Dynamic task scheduling (``mtl.schedule``): which tasks a training step trains.

``all`` (the default) trains every task every step. The others train ``mtl.schedule_tasks_per_step``
tasks a step, and a task left out of a step skips its head's forward and its loss, so the saving is
real: ``round_robin`` cycles through the tasks; ``proportional`` draws them with probability
proportional to how many training images are labelled for each; ``loss_progress`` draws them by
``softmax(r_t / T)``, r_t = L_t(last epoch) / L_t(first epoch), so a task whose loss fell less gets
more steps (like DWA, but for steps instead of loss weights).

A step's picks depend only on ``train.seed``, the step's index and the schedule's state (saved in
``last.pt``): never on the global RNG, so every process under ``torchrun`` picks the same tasks (DDP
needs the same graph on all of them) and a resumed run picks what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from vision_mtl.config import Config
    from vision_mtl.data.dataset import MultiTaskDataset


class TaskSchedule:
    """Every task every step: :meth:`next` returns None (the model runs all its heads)."""

    skips = False  # whether a step can leave a head out (DDP then needs find_unused_parameters)

    def __init__(self, tasks: list[str], seed: int = 0, per_step: int = 1):
        self.tasks, self.seed, self.per_step = list(tasks), seed, per_step
        self.step = 0  # steps picked so far (the next step's index)

    def next(self) -> list[str] | None:
        """The tasks of the next step, in ``tasks`` order (None: all of them); advances the step."""
        picked = self.pick(self.step)
        self.step += 1
        return picked

    def pick(self, step: int) -> list[str] | None:
        """The tasks of step ``step`` (0-based), without advancing."""
        return None

    def epoch_end(self, epoch_losses: dict[str, float]) -> None:
        """Each task's mean training loss of the epoch just ended (0: not measured); most schedules ignore it."""

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))

    def _in_order(self, indices: Iterable[int]) -> list[str]:
        return [self.tasks[i] for i in sorted(int(i) for i in indices)]


class RoundRobin(TaskSchedule):
    """Step s trains tasks ``s * n, ..., s * n + n - 1`` (mod the task count): each in turn."""

    skips = True

    def pick(self, step: int) -> list[str]:
        first = step * self.per_step
        return self._in_order({(first + i) % len(self.tasks) for i in range(self.per_step)})


class Weighted(TaskSchedule):
    """Draws ``per_step`` distinct tasks by :meth:`probabilities`, from a generator seeded by (seed, step)."""

    skips = True

    def pick(self, step: int) -> list[str]:
        rng = np.random.default_rng([self.seed, step])
        p = self.probabilities().numpy()
        return self._in_order(rng.choice(len(self.tasks), size=self.per_step, replace=False, p=p / p.sum()))

    def probabilities(self) -> Tensor:
        """Each task's chance of being drawn, in ``tasks`` order (float64, sums to 1)."""
        raise NotImplementedError


class Proportional(Weighted):
    """p_t proportional to the number of training images labelled for task t (at least 1, so no head
    is never trained)."""

    def __init__(self, tasks: list[str], counts: dict[str, int], seed: int = 0, per_step: int = 1):
        super().__init__(tasks, seed, per_step)
        self.counts = torch.tensor([max(1, counts.get(t, 0)) for t in self.tasks], dtype=torch.float64)

    def probabilities(self) -> Tensor:
        return self.counts / self.counts.sum()


class LossProgress(Weighted):
    """p = softmax(r / T), r_t = L_t(last epoch) / L_t(first epoch it was measured): the slower a task's
    loss falls, the more steps it gets. Equal chances until a task has two measured epochs (r = 1)."""

    def __init__(self, tasks: list[str], temperature: float, seed: int = 0, per_step: int = 1):
        super().__init__(tasks, seed, per_step)
        self.temperature = temperature
        self.start = torch.zeros(len(self.tasks), dtype=torch.float64)  # L_t(first epoch); 0 = not yet
        self.ratio = torch.ones(len(self.tasks), dtype=torch.float64)

    def probabilities(self) -> Tensor:
        return torch.softmax(self.ratio / self.temperature, dim=0)

    def epoch_end(self, epoch_losses: dict[str, float]) -> None:
        for i, task in enumerate(self.tasks):
            loss = float(epoch_losses.get(task, 0.0))
            if loss > 0 and self.start[i] == 0:
                self.start[i] = loss
            elif loss > 0:
                self.ratio[i] = loss / self.start[i]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "start": self.start.tolist(), "ratio": self.ratio.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "start" in state:
            self.start = torch.tensor(state["start"], dtype=torch.float64)
            self.ratio = torch.tensor(state["ratio"], dtype=torch.float64)


def labelled_counts(dataset: MultiTaskDataset) -> dict[str, int]:
    """How many images of ``dataset`` are labelled for each of its tasks (from the index, no decoding)."""
    counts = dict.fromkeys(dataset.tasks, 0)
    for index in range(len(dataset)):
        for task in dataset.labelled_for(index):
            counts[task] += 1
    return counts


def build_schedule(cfg: Config, tasks: list[str], train_set: MultiTaskDataset | None = None) -> TaskSchedule:
    """The schedule ``cfg.mtl.schedule`` names, for ``tasks``; ``proportional`` counts ``train_set``'s labels."""
    name, per_step, seed = cfg.mtl.schedule, cfg.mtl.schedule_tasks_per_step, cfg.train.seed
    if name == "round_robin":
        return RoundRobin(tasks, seed, per_step)
    if name == "proportional":
        return Proportional(tasks, labelled_counts(train_set), seed, per_step)
    if name == "loss_progress":
        return LossProgress(tasks, cfg.mtl.schedule_temperature, seed, per_step)
    return TaskSchedule(tasks, seed, per_step)


def with_skipped(task_losses: dict[str, Tensor], present: dict[str, Tensor],
                 tasks: list[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``task_losses`` and ``present`` of the tasks a step trained, completed for every one of ``tasks``:
    a skipped task's loss is 0 and it is not present, so a balancer leaves it out like an unlabelled one."""
    like = next(iter(task_losses.values()))
    losses = {task: task_losses.get(task, torch.zeros_like(like)) for task in tasks}
    absent = torch.zeros((), dtype=torch.bool, device=like.device)
    return losses, {task: present.get(task, absent) for task in tasks}
