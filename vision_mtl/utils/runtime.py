"""Device and inference precision choice, seeding and run folders."""

from __future__ import annotations

import functools
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
VNNI_CPU_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (the ``flags`` lines of /proc/cpuinfo), read once; empty where
    there is no /proc/cpuinfo (not Linux), so nothing is claimed there."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags")
                     for word in line.partition(":")[2].split())


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere torch emulates
    it, slower than float32."""
    return not BF16_CPU_FLAGS.isdisjoint(cpu_flags())


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX): without
    them onnxruntime's u8 x s8 kernels add pairs of products in saturating 16-bit sums."""
    return not VNNI_CPU_FLAGS.isdisjoint(cpu_flags())


def cpu_isa() -> str:
    """The widest vector/matrix instruction set this CPU offers PyTorch's and onnxruntime's
    kernels: ``AMX``, ``AVX-512``, ``AVX2`` or ``no AVX2``."""
    flags = cpu_flags()
    if "amx_tile" in flags:
        return "AMX"
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "no AVX2"


def resolve_precision(precision: str, device: torch.device, key: str = "precision") -> Literal["fp32", "bf16"]:
    """``auto`` and ``bf16`` -> ``bf16`` where ``device`` computes it natively (CUDA with bf16
    support, a CPU with AVX-512 BF16 or AMX), else ``fp32``, an explicit ``bf16`` with a warning
    naming ``key``; ``fp32`` stays."""
    if precision not in ("fp32", "bf16", "auto"):
        raise ConfigError(f"precision '{precision}' is not one of fp32, bf16, auto")
    if precision == "fp32":
        return "fp32"
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if precision == "bf16" and not native:
        logger.warning("%s bf16: %s has no native bfloat16 (emulated it is slower), running fp32", key,
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
