"""What a run's ``last.pt`` holds to continue exactly where it stopped, and how to read it back.

Besides the deployable weights every checkpoint has (``model``: the EMA weights when the EMA is
on), ``last.pt`` carries a ``training`` section: the raw weights, optimiser, schedule, gradient
scaler, the position (epoch, batches consumed in it, optimiser updates), the epoch's running
loss sums, the early-stopping and time-budget bookkeeping, and every RNG state of every process
(python, numpy, torch, CUDA). Sampling is seeded by ``seed + epoch`` (:class:`EpochSampler`), so
with these states a resumed run replays what an uninterrupted run would have done.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vision_mtl.config import Config, config_to_dict, flat_keys, load_config
from vision_mtl.engine.checkpoint import checkpoint_config, load_checkpoint
from vision_mtl.errors import CheckpointError, ConfigError
from vision_mtl.utils.atomic import remove_stale_temps

# Settings a resumed run may change: they do not alter what the run computes step by step.
RESUMABLE_OVERRIDES = ("train.epochs", "train.device", "train.patience", "train.max_minutes",
                       "train.checkpoint_every", "train.log_every", "train.plots", "train.compile",
                       "data.num_workers")


@dataclass
class Position:
    """Where a run is: ``epoch`` in progress (0-based), ``batch`` batches of it already trained on,
    ``updates`` optimiser steps so far, ``epochs`` the (possibly time-fitted) epoch count, the epoch's
    running ``loss_sums`` over ``loss_batches`` batches, ``stale_epochs`` without improvement, ``train_seconds`` spent."""

    epoch: int = 0
    batch: int = 0
    updates: int = 0
    epochs: int = 0
    loss_sums: dict[str, float] = field(default_factory=dict)
    loss_batches: int = 0
    stale_epochs: int = 0
    train_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rng_state() -> dict[str, Any]:
    """Every RNG state of this process as plain Python data (bytes, ints): what
    ``torch.load(weights_only=True)`` accepts and ``all_gather_object`` carries between processes."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tobytes(), pos, has_gauss, cached],
             "torch": _bytes(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.frombuffer(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])


def _bytes(state: torch.Tensor) -> bytes:
    return state.numpy().tobytes()


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def run_folder(path: str | Path) -> Path:
    """The run folder ``--resume`` names: the folder itself, or its ``last.pt``; any other file is
    refused with one line."""
    path = Path(path)
    if path.name == "last.pt" and not path.is_dir():
        return path.parent
    if path.is_file():
        raise CheckpointError(f"--resume '{path}' is a file, not a run; pass the run folder tools/train.py printed "
                              f"(or its last.pt); to start a new run from a checkpoint's weights use "
                              f"model.init_from={path}")
    return path


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The resumable ``last.pt`` of ``run_dir``, with a one-line error saying what to do when the
    run has none (it stopped before its first checkpoint) or it is not resumable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder '{run_dir}' not found; pass the folder tools/train.py printed")
    remove_stale_temps(run_dir, "last.pt")  # a write killed before its rename
    last = run_dir / "last.pt"
    if not last.is_file():
        hint = (f"start it again with: python tools/train.py --config {run_dir / 'config.yaml'}"
                if (run_dir / "config.yaml").is_file() else "start a new run")
        raise CheckpointError(f"'{run_dir}' has no complete checkpoint (no last.pt: the run stopped before its "
                              f"first one was written); {hint}")
    state = load_checkpoint(last)
    if not isinstance(state.get("training"), dict) or "position" not in state["training"]:
        raise CheckpointError(f"'{last}' holds no training state (written by an older version or not a "
                              "last.pt); start a new run, or use it with model.init_from")
    return state


def resume_point(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Path, dict[str, Any], Config]:
    """What ``--resume path`` continues: the run folder, its ``last.pt`` state and the config with
    ``overrides`` (see :func:`run_folder`, :func:`load_run`, :func:`resumed_config`)."""
    run_dir = run_folder(path)
    state = load_run(run_dir)
    return run_dir, state, resumed_config(state, run_dir / "last.pt", overrides)


def epochs_left(state: dict[str, Any], cfg: Config) -> int:
    """Epochs a resumed run still has to train (0 or fewer: it has finished): ``train.epochs`` of
    ``cfg``, or under a time budget the count fitted to it, less the epochs done."""
    position = state["training"]["position"]
    return (position["epochs"] if cfg.train.max_minutes else cfg.train.epochs) - position["epoch"]


def resumed_config(state: dict[str, Any], path: str | Path, overrides: list[str] | tuple[str, ...]) -> Config:
    """The run's own config with ``overrides`` applied where they keep the run the same run
    (:data:`RESUMABLE_OVERRIDES`); any other change is refused with one line."""
    saved = checkpoint_config(state, path)
    cfg = load_config(None, overrides, base=config_to_dict(saved))
    new = flat_keys(config_to_dict(cfg))
    changed = [key for key, old in flat_keys(config_to_dict(saved)).items() if new.get(key) != old]
    refused = [key for key in changed if key not in RESUMABLE_OVERRIDES]
    if refused:
        raise ConfigError(f"{refused[0]} cannot change when resuming (it would not continue the same run); "
                          f"--resume accepts {', '.join(RESUMABLE_OVERRIDES)}; start a new run for the rest")
    return cfg
