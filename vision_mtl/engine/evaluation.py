"""Evaluating a saved checkpoint: rebuild model and data from it, run the Evaluator."""

from __future__ import annotations

from pathlib import Path

from vision_mtl.config import load_config
from vision_mtl.data.loader import build_data
from vision_mtl.engine.checkpoint import load_checkpoint, load_weights
from vision_mtl.engine.evaluator import Evaluator
from vision_mtl.models import build_model
from vision_mtl.utils.runtime import resolve_device


def evaluate_checkpoint(weights: str | Path, config: str | Path | None = None,
                        overrides: list[str] | tuple[str, ...] = (), progress: bool = True) -> dict[str, float]:
    """Metrics of ``weights`` on the val split of its config (plus ``config``/``overrides`` on top)."""
    state = load_checkpoint(weights)
    cfg = load_config(config, overrides, base=state["config"])
    cfg.model.backbone_weights = None  # the checkpoint holds every weight
    model = build_model(cfg.model, state["classes"])
    load_weights(model, state["model"], weights)
    device = resolve_device(cfg.train.device)
    data = build_data(cfg, classes=state["classes"], train=False)
    evaluator = Evaluator(data.val, state["classes"], cfg.model.classification.multi_label)
    return evaluator.run(model.to(device), device, show_progress=progress)


def format_metrics(metrics: dict[str, float]) -> str:
    """A readable two-column table, headline metrics first, per-class values after."""
    keys = sorted(metrics, key=lambda k: (k.count("/") > 1, k))
    width = max((len(k) for k in keys), default=0)
    return "\n".join(f"{k:<{width}}  {metrics[k]:.4f}" for k in keys)
