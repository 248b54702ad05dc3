"""Exact resume: a run killed with SIGKILL and resumed ends with the weights an uninterrupted run has.

The training process is killed by a wrapper around ``tools/train.py`` one optimiser step after
it wrote the chosen checkpoint (so there is lost work to redo), from outside Python's control:
``os.kill(os.getpid(), SIGKILL)`` leaves no chance to save or clean up. SIGTERM also comes from
outside to the whole process group, DataLoader worker included, as Slurm, Kubernetes and
``docker stop`` send it (a worker signalled by its own parent exits quietly, so the test sends it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, one_line, run_tool

# Runs ``tools/train.py`` after arranging a signal (KILL_SIGNAL) one optimiser step after the
# checkpoint at (epoch, batch) = KILL_AT has been written; with KILL_FILE set it writes that file
# there instead and waits for the test to signal the process group.
KILLER = """
import os, runpy, signal, sys
from vision_mtl.training.trainer import Trainer

target = tuple(int(v) for v in os.environ["KILL_AT"].split(","))
original_save, original_update = Trainer._save, Trainer.update
written = []

def save(self, best=False):
    original_save(self, best)
    if (self.position.epoch, self.position.batch) == target:
        written.append(True)

def update(self):
    original_update(self)
    if written:
        written.clear()
        if os.environ.get("KILL_FILE"):
            open(os.environ["KILL_FILE"], "w").close()
            signal.pause()
        else:
            os.kill(os.getpid(), getattr(signal, os.environ["KILL_SIGNAL"]))

Trainer._save, Trainer.update = save, update
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    return state["training"]["model"], state["model"]


@pytest.fixture(scope="module")
def resume_overrides(tiny_overrides) -> list[str]:
    # 2 epochs x 4 steps, a checkpoint every 2 steps, EMA on, one loader worker (its order must replay too)
    return [*tiny_overrides, "train.epochs=2", "train.max_steps_per_epoch=4", "train.checkpoint_every=2",
            "data.num_workers=1", "train.ema_decay=0.9", "train.plots=false"]


@pytest.fixture(scope="module")
def uninterrupted(resume_overrides, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("uninterrupted")
    proc = run_tool("train.py", *resume_overrides, f"run.dir={runs}", "run.name=full")
    assert proc.returncode == 0, proc.stderr
    return runs / "full"


def _train_and_signal(script: Path, args: list[str], env: dict[str, str], group_file: Path | None,
                      timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``script`` with ``args`` in a process group of its own; once it writes ``group_file``
    (when given), send SIGTERM to the whole group."""
    with subprocess.Popen([sys.executable, str(script), *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        deadline = time.monotonic() + timeout
        while group_file and not group_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_file and group_file.exists():
            os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("kill_at, kill_signal, group, saved_at", [
    ((0, 2), "SIGKILL", False, (0, 2)),  # the step after the checkpoint is lost with the process
    ((1, 0), "SIGKILL", False, (1, 0)),
    ((0, 2), "SIGTERM", False, (0, 3)),  # the step in flight finishes and is saved
    ((0, 2), "SIGTERM", True, (0, 3)),  # to the loader worker as well: preemption ends like Ctrl-C
], ids=["sigkill-mid-epoch", "sigkill-end-of-epoch", "sigterm", "sigterm-process-group"])
def test_stop_then_resume_gives_the_uninterrupted_weights(kill_at, kill_signal, group, saved_at, resume_overrides,
                                                          uninterrupted, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    group_file = tmp_path / "signal-the-group" if group else None
    env = {**os.environ, "KILL_AT": f"{kill_at[0]},{kill_at[1]}", "KILL_SIGNAL": kill_signal, "OMP_NUM_THREADS": "1",
           "KILL_FILE": str(group_file or "")}
    proc = _train_and_signal(script, [str(REPO_ROOT / "tools" / "train.py"), *resume_overrides,
                                      f"run.dir={tmp_path}", "run.name=cut"], env, group_file)
    run_dir = tmp_path / "cut"
    if kill_signal == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    else:
        assert proc.returncode == 130, proc.stderr
        assert f"stopped by SIGTERM; saved {run_dir / 'last.pt'}" in proc.stderr
        assert f"python tools/train.py --resume {run_dir}" in proc.stderr
    saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["training"]["position"]
    assert (saved["epoch"], saved["batch"]) == saved_at

    resumed = run_tool("train.py", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr

    raw, ema = _weights(run_dir)
    raw_full, ema_full = _weights(uninterrupted)
    for name, value in raw_full.items():
        torch.testing.assert_close(raw[name], value, rtol=0, atol=1e-6, msg=f"raw weight {name}")
    for name, value in ema_full.items():
        torch.testing.assert_close(ema[name], value, rtol=0, atol=1e-6, msg=f"EMA weight {name}")
    history = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # one row per epoch: nothing repeated, nothing missing


def test_resume_without_a_complete_checkpoint_says_what_to_do(tmp_path, make_config):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}\n")
    stale = run_dir / ".last.pt.x1y2z3.tmp"  # what a kill during the first write leaves
    stale.write_bytes(b"half a checkpoint")
    proc = run_tool("train.py", "--resume", str(run_dir))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "no complete checkpoint" in line and f"--config {run_dir / 'config.yaml'}" in line
    assert not stale.exists()


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("target, overrides", [("", []), ("last.pt", ["train.epochs=1"])],
                         ids=["folder-same-epochs", "last.pt-fewer-epochs"])
def test_resuming_a_finished_run_trains_nothing_and_says_so(target, overrides, trained_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained_run, run_dir)
    before = _files(run_dir)
    proc = run_tool("train.py", "--resume", str(run_dir / target), *overrides)
    assert proc.returncode == 0, proc.stderr  # a requeued job that resumes a finished run is not a failure
    epochs = overrides[0].split("=")[1] if overrides else "2"
    assert (f"{run_dir} already finished 2 epochs (train.epochs={epochs}); nothing to train: raise train.epochs "
            "above 2 to train more") in proc.stderr
    assert _files(run_dir) == before  # nothing written, not even config.yaml


def test_resume_of_a_file_other_than_last_pt_says_what_it_takes(trained_run):
    before = _files(trained_run)
    proc = run_tool("train.py", "--resume", str(trained_run / "best.pt"))
    assert proc.returncode == 2
    assert one_line(proc.stderr)
    assert "pass the run folder tools/train.py printed (or its last.pt)" in proc.stderr
    assert _files(trained_run) == before


def test_resume_applies_more_epochs_and_refuses_other_changes(trained_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained_run, run_dir)
    refused = run_tool("train.py", "--resume", str(run_dir), "train.lr=0.5")
    assert refused.returncode == 2
    assert "train.lr cannot change when resuming" in refused.stderr and "\n" not in refused.stderr.strip()

    more = run_tool("train.py", "--resume", str(run_dir), "train.epochs=3")
    assert more.returncode == 0, more.stderr
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 3 and state["config"]["train"]["epochs"] == 3
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 3
