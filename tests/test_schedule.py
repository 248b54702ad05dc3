"""Dynamic task scheduling (``mtl.schedule``): each schedule's picks, and a trainer in which a task
left out of a step runs no head forward and gets no gradient, keeps honest epoch means, resumes
exactly and trains in lockstep under DDP."""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import torch

from conftest import REPO_ROOT, SHAPES_CLASSES, one_line
from test_data_mixed import _split_shapes, mixed_config
from vision_mtl.config import load_config
from vision_mtl.errors import ConfigError
from vision_mtl.mtl.schedule import LossProgress, Proportional, RoundRobin, TaskSchedule
from vision_mtl.training.trainer import Trainer

TASKS = ["classification", "detection", "segmentation"]
DRAWS = 4000  # a frequency's standard deviation is at most 0.008: the 0.03 tolerance is ~4 of them


def _picks(schedule: TaskSchedule, steps: int) -> list[tuple[str, ...]]:
    return [tuple(schedule.next()) for _ in range(steps)]


def _frequencies(schedule: TaskSchedule) -> list[float]:
    counts = Counter(task for picked in _picks(schedule, DRAWS) for task in picked)
    return [counts[task] / DRAWS for task in schedule.tasks]


# ---------------------------------------------------------------------------------- the picks

def test_all_trains_every_task_and_round_robin_cycles():
    assert TaskSchedule(TASKS).next() is None and not TaskSchedule(TASKS).skips
    assert _picks(RoundRobin(TASKS), 6) == [(t,) for t in TASKS * 2]
    pairs = _picks(RoundRobin(TASKS, per_step=2), 3)
    assert pairs == [("classification", "detection"), ("classification", "segmentation"),
                     ("detection", "segmentation")]  # in model order; each task twice in 3 steps


def test_proportional_frequencies_follow_the_labelled_counts():
    schedule = Proportional(TASKS, {"classification": 600, "detection": 300, "segmentation": 100}, seed=3)
    assert _frequencies(schedule) == pytest.approx([0.6, 0.3, 0.1], abs=0.03)
    two = Proportional(TASKS, {"classification": 600, "detection": 300, "segmentation": 100}, per_step=2)
    assert all(len(set(picked)) == 2 for picked in _picks(two, 50))  # distinct tasks in a step


def test_loss_progress_gives_the_slower_task_more_steps():
    schedule = LossProgress(TASKS, temperature=0.5, seed=1)
    schedule.epoch_end({"classification": 2.0, "detection": 1.0, "segmentation": 4.0})
    assert _frequencies(schedule) == pytest.approx([1 / 3] * 3, abs=0.03)  # one epoch: no progress known
    schedule.epoch_end({"classification": 0.4, "detection": 0.9, "segmentation": 2.0})  # r = 0.2, 0.9, 0.5
    expected = torch.softmax(torch.tensor([0.2, 0.9, 0.5]) / 0.5, dim=0).tolist()
    frequencies = _frequencies(schedule)
    assert frequencies == pytest.approx(expected, abs=0.03)
    assert frequencies[1] > frequencies[2] > frequencies[0]  # detection fell least, classification most
    schedule.epoch_end({"detection": 0.5})  # unmeasured tasks (0 / absent) keep their ratio
    assert schedule.ratio.tolist() == pytest.approx([0.2, 0.5, 0.5])


def test_picks_come_from_the_seed_and_step_only():
    counts = {"classification": 5, "detection": 3, "segmentation": 2}
    first, again, other = (Proportional(TASKS, counts, seed=s) for s in (7, 7, 8))
    torch.manual_seed(0)
    picks = _picks(first, 40)
    torch.manual_seed(1)  # the global RNG plays no part
    assert _picks(again, 40) == picks and _picks(other, 40) != picks
    resumed = LossProgress(TASKS, temperature=0.5, seed=7)
    trained = LossProgress(TASKS, temperature=0.5, seed=7)
    trained.epoch_end(counts)
    trained.epoch_end({"classification": 1, "detection": 3, "segmentation": 1})
    _picks(trained, 10)
    resumed.load_state_dict(trained.state_dict())
    assert _picks(resumed, 20) == _picks(trained, 20)


def test_too_many_tasks_per_step_is_a_config_error(make_config):
    with pytest.raises(ConfigError) as info:
        make_config("mtl.schedule=round_robin", "mtl.schedule_tasks_per_step=4")
    assert one_line(info.value) and "mtl.schedule_tasks_per_step=4" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_config("mtl.schedule=every_other")
    assert one_line(info.value) and "mtl.schedule" in str(info.value) and "round_robin" in str(info.value)


def test_proportional_counts_labelled_images_of_mixed_sources(shapes_root, make_config, tmp_path):
    # detection from 11 images, segmentation from 11 others, classification from 10 others + all 32
    sources = [*_split_shapes(shapes_root, tmp_path / "mixed"),
               {"format": "csv", "images": str(shapes_root / "train" / "images"),
                "labels": str(shapes_root / "train" / "labels.csv")}]
    trainer = Trainer(mixed_config(make_config, tmp_path / "mixed", sources, None, "mtl.schedule=proportional"),
                      run_dir=tmp_path)
    assert trainer.data.classes == SHAPES_CLASSES
    assert trainer.schedule.probabilities().tolist() == pytest.approx([42 / 64, 11 / 64, 11 / 64])


# ---------------------------------------------------------------------------------- the trainer

def test_a_skipped_task_runs_no_head_and_gets_no_gradient(make_config, tmp_path):
    trainer = Trainer(make_config("mtl.schedule=round_robin"), run_dir=tmp_path)
    calls = Counter()
    for task, head in trainer.model.heads.items():
        head.register_forward_hook(lambda module, args, out, task=task: calls.update([task]))
    batches = iter(trainer.data.train)
    for step, task in enumerate(TASKS):
        calls.clear()
        before = {name: p.detach().clone() for name, p in trainer.model.heads.named_parameters()}
        losses = trainer.training_step(next(batches))
        assert dict(calls) == {task: 1}, step
        assert {key.split("/")[0] for key in losses if key != "loss"} == {task}
        for name, param in trainer.model.heads.named_parameters():
            if name.startswith(f"{task}."):
                assert param.grad is not None and torch.isfinite(param.grad).all(), name
            else:  # no gradient, so no update either (not even weight decay)
                assert param.grad is None and torch.equal(param, before[name]), (step, name)
        trained = [p.grad for name, p in trainer.model.heads.named_parameters() if name.startswith(f"{task}.")]
        assert any(g.abs().sum() > 0 for g in trained), task


def test_a_schedule_picking_every_task_trains_like_all(make_config, tmp_path):
    weights = []
    for schedule in ("all", "round_robin"):
        torch.manual_seed(0)
        (tmp_path / schedule).mkdir()
        trainer = Trainer(make_config(f"mtl.schedule={schedule}", "mtl.schedule_tasks_per_step=3"),
                          run_dir=tmp_path / schedule)
        batches = iter(trainer.data.train)
        for _ in range(2):
            trainer.training_step(next(batches))
        weights.append(trainer.model.state_dict())
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=0, msg=name)


def _rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("schedule", ["round_robin", "proportional", "loss_progress"])
def test_each_schedule_trains_and_logs_honest_task_means(schedule, make_config, tmp_path):
    cfg = make_config(f"mtl.schedule={schedule}", "train.max_steps_per_epoch=4", "train.plots=false")
    trainer = Trainer(cfg, run_dir=tmp_path)
    steps: list[dict[str, float]] = []
    run_step = trainer.run_step

    def recording_step(batch, sync_gradients=True):
        run_step(batch, sync_gradients)
        steps.append(trainer._floats(trainer.last_losses))

    trainer.run_step = recording_step
    trainer.fit()
    rows = _rows(trainer.run_dir)
    assert len(rows) == 2 and len(steps) == 8
    for epoch, row in enumerate(rows):
        taken = steps[4 * epoch:4 * epoch + 4]
        assert all(math.isfinite(v) for s in taken for v in s.values())
        assert sum(float(row[f"steps/{task}"]) for task in TASKS) == 4  # one task a step
        for task in TASKS:
            ran = [s for s in taken if any(k.startswith(f"{task}/") for k in s)]
            assert float(row[f"steps/{task}"]) == len(ran)
            for key in {k for s in ran for k in s if k.startswith(f"{task}/")}:  # the mean of its own steps only
                assert float(row[f"train/{key}"]) == pytest.approx(sum(s[key] for s in ran) / len(ran), rel=1e-5)


def test_round_robin_resumes_mid_epoch_exactly(make_config, tmp_path):
    cfg = make_config("mtl.schedule=round_robin", "train.max_steps_per_epoch=4", "train.checkpoint_every=2",
                      "train.plots=false")
    (tmp_path / "full").mkdir()
    full = Trainer(cfg, run_dir=tmp_path / "full")
    save = full._save

    def save_and_copy(best=False):
        save(best)
        if (full.position.epoch, full.position.batch) == (0, 2):  # step 2 of 4: the schedule is mid-cycle
            shutil.copytree(full.run_dir, tmp_path / "cut")

    full._save = save_and_copy
    full.fit()
    resumed = Trainer.resume(tmp_path / "cut")
    assert resumed.schedule.step == 2
    resumed.fit()
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "full")


def test_round_robin_under_two_processes_keeps_them_in_lockstep(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "mtl.schedule=round_robin", "train.epochs=1", "train.max_steps_per_epoch=3",
                 "train.plots=false", f"run.dir={tmp_path}", "run.name=ddp"]
    load_config(None, overrides)  # a bad override fails here, not inside torchrun
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO_ROOT / "tests" / "distributed_train.py"), str(tmp_path), *overrides],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in ranks[0]["parameters"].items():
        torch.testing.assert_close(ranks[1]["parameters"][name], value, rtol=0, atol=0, msg=name)
    row = _rows(tmp_path / "ddp")[0]
    assert [row[f"steps/{task}"] for task in TASKS] == ["1.0", "1.0", "1.0"]
