"""Checkpoints: atomic writes, safe loads (``weights_only=True``), clear errors on mismatch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vision_mtl.config import Config, config_from_dict, config_to_dict
from vision_mtl.errors import CheckpointError, VisionMTLError, first_line
from vision_mtl.models import MultiTaskModel, build_model
from vision_mtl.utils.atomic import atomic_open

REQUIRED_KEYS = ("model", "config", "classes")
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; its older pickle format


def save_checkpoint(path: str | Path, model: MultiTaskModel, cfg: Config, classes: dict[str, list[str]],
                    **extra: Any) -> None:
    """Write to a temporary file, sync and rename, so a crash or power cut never leaves a half-written checkpoint."""
    path = Path(path)
    state = {"model": model.state_dict(), "config": config_to_dict(cfg), "classes": classes, **extra}
    with atomic_open(path, "wb", fsync=True) as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path, role: str = "checkpoint") -> dict[str, Any]:
    """Read a vision_mtl checkpoint without unpickling arbitrary objects; ``role`` names what the
    user passed it as (``model.init_from``) in the one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{role} '{path}' not found; pass a .pt written by tools/train.py")
    with path.open("rb") as fh:
        start = fh.read(4)
    if not start.startswith(TORCH_FILE_STARTS):
        raise CheckpointError(f"{role} '{path}' is {_file_kind(path, start)}; pass a checkpoint (.pt) written by "
                              "tools/train.py")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        # never pass on torch's advice to load with weights_only=False: that runs whatever the file holds
        reason = ("it holds Python objects besides tensors and plain data, which are never unpickled"
                  if "weights only load failed" in str(exc).lower() else first_line(exc))
        raise CheckpointError(f"cannot read {role} '{path}' ({reason}); is it a .pt from tools/train.py?") from exc
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"'{path}' is not a vision_mtl checkpoint (needs keys {', '.join(REQUIRED_KEYS)})")
    problem = _content_problem(state)
    if problem:
        raise CheckpointError(f"'{path}' is damaged or not from tools/train.py: {problem}")
    return state


def _file_kind(path: Path, start: bytes) -> str:
    """What a file that torch.save did not write seems to be, from its suffix and first bytes."""
    if not start:
        return "empty"
    if path.suffix.lower() == ".onnx" or start[:1] == b"\x08":  # ModelProto's first field: ir_version
        return "an ONNX graph, not a checkpoint"
    return "not a PyTorch checkpoint"


def _content_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's required entries, or None."""
    model, classes = state["model"], state["classes"]
    if not isinstance(model, dict) or not model or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return "'model' must map parameter names to tensors"
    if not isinstance(state["config"], dict):
        return "'config' must be a mapping"
    if not isinstance(classes, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v) for k, v in classes.items()):
        return "'classes' must map task names to lists of class names"
    return None


def checkpoint_config(state: dict[str, Any], path: str | Path) -> Config:
    """The config a checkpoint was trained with; its weights file is not needed to rebuild it."""
    try:
        cfg = config_from_dict(state["config"])
    except VisionMTLError as exc:
        raise CheckpointError(f"checkpoint '{path}' holds a config this version cannot read: {exc}") from exc
    cfg.model.backbone_weights, cfg.model.pretrained = None, False
    return cfg


def load_weights(model: MultiTaskModel, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict`` with a one-line summary of what does not fit, instead of a key dump."""
    problems = fit_problems(model.state_dict(), state_dict)
    if problems:
        raise CheckpointError(f"checkpoint '{path}' does not fit this model config: {problems}; build the model "
                              "from the checkpoint's own config (drop --config/overrides)")
    model.load_state_dict(state_dict)


def fit_problems(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor]) -> str:
    """What keeps ``state_dict`` from loading into a model whose state is ``own``, counted with one
    example each ('' when it fits)."""
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {list(state_dict[k].shape)} vs {list(v.shape)}"
             for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
    return "; ".join(problems)


def model_from_state(state: dict[str, Any], cfg: Config, path: str | Path) -> MultiTaskModel:
    """The model ``cfg`` describes, with a checkpoint's weights (every head needs its class names)."""
    missing = [task for task in cfg.model.tasks if task not in state["classes"]]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' has no class names for task '{missing[0]}'; it is damaged, or "
                              f"model.tasks was overridden to a task it was not trained for")
    model = build_model(cfg.model, state["classes"])
    load_weights(model, state["model"], path)
    return model


def load_model(path: str | Path, cfg: Config | None = None) -> tuple[MultiTaskModel, Config, dict[str, Any]]:
    """Rebuild a trained model: from ``cfg`` when given, else from the checkpoint's own config."""
    state = load_checkpoint(path)
    cfg = cfg or checkpoint_config(state, path)
    return model_from_state(state, cfg, path), cfg, state
