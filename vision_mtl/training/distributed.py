"""The model as each training process runs it: its device (under ``torchrun`` with CUDA, the
process's own GPU), optional SyncBatchNorm, the DDP wrapper and optional ``torch.compile``."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vision_mtl.models import MultiTaskModel
from vision_mtl.utils.distributed import Processes
from vision_mtl.utils.runtime import resolve_device


def process_device(name: str, processes: Processes) -> torch.device:
    """``train.device``, and under ``torchrun`` with CUDA this process's own GPU (LOCAL_RANK)."""
    device = resolve_device(name)
    if device.type == "cuda" and processes.world > 1:
        device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    return device


def with_sync_bn(model: MultiTaskModel, enabled: bool, processes: Processes) -> MultiTaskModel:
    """BatchNorm statistics shared over processes (only meaningful under ``torchrun``)."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if enabled and processes.world > 1 else model


def replicate(model: MultiTaskModel, processes: Processes, device: torch.device, compile_model: bool,
              skips_heads: bool = False) -> tuple[DistributedDataParallel | None, torch.nn.Module]:
    """The DDP wrapper (None in one process) and the module the training forward goes through
    (DDP and/or ``torch.compile`` around ``model``); ``model`` itself stays the one to save.
    ``skips_heads``: some steps run only some heads (``mtl.schedule``), so DDP must look for the
    parameters a step left unused (a cost each step, paid only then)."""
    ddp = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=skips_heads)
           if processes.world > 1 else None)
    network = ddp or model
    return ddp, torch.compile(network) if compile_model else network


def share_buffers(model: nn.Module, processes: Processes) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every process. DDP broadcasts them before each forward,
    but the last training forward leaves each process its own, and so does an update that bypassed DDP
    (gradient balancers): shared before validation, every process evaluates the weights rank 0 saves."""
    if processes.world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
