"""Device and inference precision choice, seeding and run folders."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vision_mtl.errors import ConfigError

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"train.device '{name}' is not a device name; use auto, cpu or cuda[:N]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device '{name}' asked for CUDA but none is available; use auto or cpu")
    return device


Precision = Literal["fp32", "bf16", "auto"]
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX, /proc/cpuinfo flags);
    elsewhere torch emulates it, slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no flags to read, so no claim of native bf16
        return False
    return not BF16_CPU_FLAGS.isdisjoint(flags)


def resolve_precision(precision: str, device: torch.device) -> Literal["fp32", "bf16"]:
    """``auto`` and ``bf16`` -> ``bf16`` where ``device`` computes it natively (CUDA with bf16
    support, a CPU with AVX-512 BF16 or AMX), else ``fp32``; ``fp32`` stays."""
    if precision not in ("fp32", "bf16", "auto"):
        raise ConfigError(f"precision '{precision}' is not one of fp32, bf16, auto")
    if precision == "fp32":
        return "fp32"
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if precision == "bf16" and not native:
        logger.warning("precision bf16: %s has no native bfloat16 (emulated it is slower), running fp32",
                       "this GPU" if device.type == "cuda" else "this CPU (no avx512_bf16 or amx_bf16)")
    return "bf16" if native else "fp32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_run_dir(base: str | Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3``... so an earlier run is never overwritten."""
    base = Path(base)
    candidate, n = base / name, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{name}-{n}"
    candidate.mkdir(parents=True)
    return candidate
