"""Transfer from a trained model: initialise chosen parts from a checkpoint, freeze parts, and say
exactly what was loaded (``model.init_from``, ``model.init_parts``, ``model.freeze``).

Parts are the state-dict prefixes ``backbone.``, ``neck.`` and ``heads.<task>.``. A chosen backbone or
neck must fit the checkpoint's exactly, and so must a head taken from it; anything else is an error,
never a silent partial load. A head is taken only when the checkpoint has its task with the same
class names; otherwise it is new and keeps its fresh initialisation (and always trains).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vision_mtl.config import ModelConfig
from vision_mtl.engine.checkpoint import fit_problems, load_checkpoint
from vision_mtl.errors import CheckpointError, ConfigError
from vision_mtl.models.multitask import MultiTaskModel


@dataclass
class LoadReport:
    """Which state-dict keys came from ``path`` and why the others did not."""

    path: str
    loaded: list[str] = field(default_factory=list)  # taken from the checkpoint
    skipped: list[str] = field(default_factory=list)  # in a part not in init_parts: fresh init
    new: list[str] = field(default_factory=list)  # a head whose task the checkpoint lacks: fresh init
    mismatched: list[str] = field(default_factory=list)  # a head whose classes differ from the checkpoint's: fresh init
    unused: list[str] = field(default_factory=list)  # checkpoint keys this model has no place for
    loaded_heads: list[str] = field(default_factory=list)  # tasks whose head came from the checkpoint

    def summary(self) -> str:
        """One line for the log."""
        new_heads = sorted({key.split(".")[1] for key in self.new + self.mismatched})
        return (f"init from {self.path}: {len(self.loaded)} tensors loaded, {len(self.skipped)} skipped (not in "
                f"model.init_parts), {len(self.new)} new and {len(self.mismatched)} with other classes "
                f"(fresh heads: {', '.join(new_heads) or 'none'}), {len(self.unused)} checkpoint tensors unused")

    def lines(self) -> list[str]:
        """The summary, then every key under its heading."""
        out = [self.summary()]
        for title, keys in (("loaded", self.loaded), ("skipped (part not in model.init_parts)", self.skipped),
                            ("new (task not in the checkpoint)", self.new),
                            ("mismatched (head classes differ from the checkpoint's)", self.mismatched),
                            ("unused (in the checkpoint, not in this model)", self.unused)):
            out += [f"{title}: {len(keys)}", *(f"  {key}" for key in keys)]
        return out


def init_from_checkpoint(model: MultiTaskModel, path: str | Path, parts: Sequence[str],
                         classes: dict[str, list[str]]) -> LoadReport:
    """Load the ``parts`` of ``model`` from the checkpoint at ``path``; ``classes`` are the model's
    class names by task (a head is loaded only when the checkpoint's match)."""
    state = load_checkpoint(path, role="model.init_from")
    theirs: dict[str, torch.Tensor] = state["model"]
    own = model.state_dict()
    sharing = state["config"].get("model", {}).get("sharing", "hard")
    trained_with = (f"; it was trained with model.sharing={sharing}, this model has model.sharing={model.sharing}"
                    if sharing != model.sharing else "")
    report = LoadReport(str(path), unused=[k for k in theirs if k not in own])
    for name, keys in _groups(own).items():
        part, _, task = name.partition(".")
        if part not in parts:
            report.skipped += keys
            continue
        if task and task not in state["classes"]:
            report.new += keys
            continue
        if task and state["classes"][task] != classes[task]:
            report.mismatched += keys
            continue
        problems = fit_problems({k: own[k] for k in keys}, {k: v for k, v in theirs.items() if _group(k) == name})
        if problems:
            raise CheckpointError(f"model.init_from '{path}': its {name} does not fit this model ({problems})"
                                  f"{trained_with}; use the checkpoint's model settings for it or drop {part} from "
                                  "model.init_parts")
        report.loaded += keys
        if task:
            report.loaded_heads.append(task)
    model.load_state_dict({**own, **{k: theirs[k] for k in report.loaded}})
    return report


def freeze_parts(model: MultiTaskModel, parts: Sequence[str], loaded_heads: Sequence[str] = ()) -> None:
    """Stop training ``parts`` (no gradients, norms and dropout in eval mode); of the heads only those
    in ``loaded_heads`` are frozen, so a new head always trains."""
    for module in _part_modules(model, parts, loaded_heads):
        module.requires_grad_(False)
        module.eval()
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model.freeze=[{', '.join(parts)}] leaves nothing to train; freeze fewer parts or add a task "
                          "whose head is new")


def keep_frozen_in_eval(model: nn.Module) -> None:
    """After ``model.train()``: put back in eval mode each module whose parameters are all frozen (a
    part, a backbone stage), so its batch-norm statistics stay those it was trained with."""
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def freeze_stages(model: MultiTaskModel, stages: int) -> None:
    """``model.freeze_stages``: no gradients for backbone stages 1..``stages`` (call it after the
    optimiser is built, so that it holds their parameters for when they unfreeze)."""
    if not stages:
        return
    for module in model.backbone.stage_modules(stages):
        module.requires_grad_(False)


def unfreeze_stages(model: MultiTaskModel, cfg: ModelConfig, epoch: int) -> bool:
    """At the start of ``epoch`` (from 0): the stages ``model.freeze_stages`` froze train again once
    ``model.unfreeze_epoch`` (from 1) has come. True when this call unfroze them."""
    if cfg.unfreeze_epoch is None or epoch + 1 < cfg.unfreeze_epoch:
        return False
    frozen = [p for module in model.backbone.stage_modules(cfg.freeze_stages) for p in module.parameters()
              if not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    return bool(frozen)


def apply_transfer(model: MultiTaskModel, cfg: ModelConfig, classes: dict[str, list[str]]) -> LoadReport | None:
    """``model.init_from`` then ``model.freeze`` on a freshly built model; the load report, if any."""
    report = init_from_checkpoint(model, cfg.init_from, cfg.init_parts, classes) if cfg.init_from else None
    if cfg.freeze:
        freeze_parts(model, cfg.freeze, report.loaded_heads if report else ())
    return report


def _part_modules(model: MultiTaskModel, parts: Sequence[str], loaded_heads: Sequence[str]) -> list[nn.Module]:
    modules = [getattr(model, part) for part in ("backbone", "neck") if part in parts]
    if "heads" in parts:
        modules += [model.heads[task] for task in loaded_heads]
    return modules


def _group(key: str) -> str:
    """``backbone``, ``neck`` or ``heads.<task>``: the unit that is loaded whole or not at all."""
    return ".".join(key.split(".")[:2]) if key.startswith("heads.") else key.split(".")[0]


def _groups(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in state:
        groups.setdefault(_group(key), []).append(key)
    return groups
