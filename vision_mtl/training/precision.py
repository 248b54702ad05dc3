"""Mixed precision for training: the autocast context and, for CUDA fp16 only, a gradient scaler.

``train.amp``: ``auto`` gives bf16 on a CUDA device that supports it and fp32 elsewhere; ``bf16``
bf16 autocast where the device computes bf16 natively (also a CPU with AVX-512 BF16 or AMX), else
fp32 with a warning, as inference does: emulated bf16 is several times slower than fp32 (3-10x on
an AVX2 CPU, issue 19) and no more accurate, so refusing would only make one config fail on some
machines; ``fp16`` fp16 autocast with a ``GradScaler`` (CUDA only), ``off`` plain fp32. On this
project's CPU (AVX-512 BF16) a bf16 training step took 0.71x the fp32 time (``tools/benchmark.py
engine``), but the weight gradient of the pyramid's smallest (1x1) level came out non-finite in
about one step of five with the tiny test model, so the CPU default stays fp32 and bf16 there is
the user's choice (such steps are skipped and reported).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vision_mtl.errors import ConfigError
from vision_mtl.utils import runtime


class Precision:
    """``with precision.autocast():`` around the forward and loss; ``scale(loss).backward()``;
    ``unscale(optimizer)`` before any gradient arithmetic (clipping, gradient balancers);
    ``step(optimizer)`` returns False when fp16 gradients overflowed and the step was skipped."""

    def __init__(self, mode: str, device: torch.device):
        self.dtype = resolve_amp(mode, device)
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype is torch.float16 else None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def describe(self) -> str:
        """``precision fp32 on cpu (AVX-512; no native bf16)``, ``precision bf16 on cuda:0 (NVIDIA H100)``:
        what the run computes in and the kernels it gets, for the start of the training log."""
        if self.device.type == "cuda":
            hardware = torch.cuda.get_device_name(self.device)
        else:
            hardware = f"{runtime.cpu_isa()}; {'native' if runtime.cpu_has_bf16() else 'no native'} bf16"
        return f"precision {self.name} on {self.device} ({hardware})"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler else loss

    def loss_scale(self) -> float:
        """The fp16 loss scale (1 without a scaler), for a gradient balancer that scales each task's loss itself."""
        return float(self.scale(torch.ones((), device=self.device))) if self.scaler else 1.0  # a host sync

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``train.amp`` asks for on ``device`` (None: fp32)."""
    if mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if mode == "fp16" and device.type != "cuda":
        fix = "use bf16 or off" if runtime.cpu_has_bf16() else "use off (this CPU has no native bf16)"
        raise ConfigError(f"train.amp=fp16 needs a CUDA device (fp16 on CPU is slow and needs loss scaling); {fix}")
    if mode == "bf16":
        return torch.bfloat16 if runtime.resolve_precision("bf16", device, key="train.amp") == "bf16" else None
    return torch.float16
