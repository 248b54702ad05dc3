"""What the chosen sharing scheme costs: its parameters and its measured inference time, logged
when training starts so that schemes can be compared from their logs."""

from __future__ import annotations

import statistics

import torch

from vision_mtl.utils.timing import interleaved_timings
from vision_mtl.models.multitask import MultiTaskModel

TIMED_FORWARDS = 3


def sharing_summary(model: MultiTaskModel, batch_size: int, image_size: int, device: torch.device) -> str:
    """One line: ``model.sharing``, parameters (all, shared trunk) and the median ms of a forward of
    ``batch_size`` images of ``image_size`` px, in eval mode without gradients (one warm-up forward).
    The model's train/eval mode is left as it was."""
    images = torch.full((batch_size, 3, image_size, image_size), 0.5, device=device)  # no RNG draw: resume stays exact
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        times = interleaved_timings({"model": lambda: model(images)}, TIMED_FORWARDS, warmup=1, sync=sync)["model"]
    model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    shared = sum(p.numel() for p in model.shared_parameters())
    return (f"model.sharing={model.sharing}: {total / 1e6:.2f} M parameters ({shared / 1e6:.2f} M shared), "
            f"{1000 * statistics.median(times):.1f} ms per batch of {batch_size} at {image_size} px "
            f"({device.type}, eval, median of {TIMED_FORWARDS})")
