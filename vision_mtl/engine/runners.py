"""Runners: one call for a trained model whatever its form, so evaluation and inference cannot tell
PyTorch from ONNX.

``runner(images)`` takes letterboxed uint8 RGB images [B, 3, H, W] (what the loaders and
``prepare_images`` give) and returns the heads' predictions ``{task: {name: tensor}}``; the
uint8 -> [0, 1] float step happens here, once, for both back ends. ``runner.info`` describes the
model (tasks, class names, input size, config).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import onnxruntime as ort
import torch

from vision_mtl.config import Config, config_from_dict, config_to_dict, flat_keys, load_config
from vision_mtl.data.sample import to_float
from vision_mtl.engine.export_wrapper import OUTPUTS, predictions_from_outputs
from vision_mtl.engine.model_info import ModelInfo
from vision_mtl.engine.results import Predictions
from vision_mtl.errors import CheckpointError, ConfigError, first_line
from vision_mtl.utils import runtime
from vision_mtl.utils.runtime import Precision, resolve_device, resolve_precision

if TYPE_CHECKING:
    from vision_mtl.models import MultiTaskModel

logger = logging.getLogger(__name__)

# metadata_props key of an int8 graph naming its weight range; int8 graphs without it (exported
# before issue 19) have full 8-bit weights, exact only on CPUs with VNNI (export/quantize.py).
INT8_KEY = "vision_mtl.int8"
PORTABLE_INT8 = "portable: u8 activations, s8 weights 7-bit (reduce_range)"


class Runner(Protocol):
    info: ModelInfo

    @property
    def tasks(self) -> list[str]: ...

    def __call__(self, images: torch.Tensor, tasks: Sequence[str] | None = None) -> Predictions:
        """Predictions of every task of the model, or of ``tasks`` only."""


class TorchRunner:
    """A PyTorch model in eval mode on ``device``; with ``precision="bf16"`` the network runs under
    bfloat16 autocast and its outputs return to float32 before postprocessing (NMS, argmax)."""

    def __init__(self, model: MultiTaskModel, info: ModelInfo, device: torch.device,
                 precision: Literal["fp32", "bf16"] = "fp32"):
        self.model = model
        self.info = info
        self.device = device
        self.precision = precision

    @property
    def tasks(self) -> list[str]:
        return self.info.tasks

    def __call__(self, images: torch.Tensor, tasks: Sequence[str] | None = None) -> Predictions:
        self.model.eval()
        with torch.inference_mode():
            x = to_float(images.to(self.device, non_blocking=True))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                raw = self.model(x, tasks)
            raw = {task: {k: v.float() for k, v in r.items()} for task, r in raw.items()}
            return self.model.predict(raw, tuple(x.shape[-2:]))


class OnnxRunner:
    """An exported model (tools/export_onnx.py: dynamic batch) in an onnxruntime session, on CUDA
    when onnxruntime-gpu provides it, else on the CPU."""

    def __init__(self, path: str | Path):
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        # Idle threads sleep instead of spinning: they would take the CPU from decoding workers and
        # the result writer that run beside the model in folder inference.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for unreadable or invalid files
            raise CheckpointError(f"cannot load ONNX model '{path}': {first_line(exc)}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, str(path))
        self.precision = meta.get("precision", "float32")  # float32, float16 or int8: fixed at export
        if self.precision == "int8" and meta.get(INT8_KEY) != PORTABLE_INT8 and not runtime.cpu_has_vnni():
            logger.warning("'%s' has full 8-bit int8 weights, whose sums may saturate on this CPU without VNNI "
                           "(scores and boxes then go wrong); re-export it with tools/export_onnx.py --int8", path)
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.input_dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
        self.dynamic_size = not all(isinstance(d, int) for d in graph_input.shape[2:])  # names where dynamic
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.detection = config_from_dict(self.info.config).model.detection
        self._buffers = threading.local()

    @property
    def tasks(self) -> list[str]:
        return self.info.tasks

    def __call__(self, images: torch.Tensor, tasks: Sequence[str] | None = None) -> Predictions:
        names = [n for n in self.output_names if tasks is None or OUTPUTS[n][0] in tasks]
        outputs = self.session.run(names, {self.input_name: self._graph_input(images)})
        named = {name: torch.from_numpy(value) for name, value in zip(names, outputs)}
        return predictions_from_outputs(named, self.detection)

    def _graph_input(self, images: torch.Tensor) -> np.ndarray:
        """uint8 images / 255 in the graph's float type (what ``to_float`` computes, bit for bit), into
        an array kept between calls of a thread: a fresh 20 MB array per batch of 16 at 320 px cost
        more in page faults than the division (34 ms against 1.5 ms a batch)."""
        pixels = images.cpu().numpy()
        buffer = getattr(self._buffers, "input", None)
        if buffer is None or buffer.shape != pixels.shape:
            buffer = self._buffers.input = np.empty(pixels.shape, self.input_dtype)
        return np.divide(pixels, np.float32(255.0), out=buffer, dtype=np.float32, casting="same_kind")


def load_runner(weights: str | Path, config: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = (), precision: Precision = "fp32") -> tuple[Runner, Config]:
    """A runner for a checkpoint (``.pt``) or an exported model (``.onnx``), and the config to use it
    with: the model's own, with ``config``/``overrides`` on top (e.g. another validation split).
    ``precision`` applies to checkpoints (:func:`~vision_mtl.utils.runtime.resolve_precision`); an
    ONNX graph's precision was fixed at export, so only ``fp32`` and ``auto`` go with one."""
    if Path(weights).suffix.lower() == ".onnx":
        if precision == "bf16":
            raise ConfigError(f"precision bf16 applies to checkpoints; '{weights}' is ONNX, whose precision is "
                              "set at export (tools/export_onnx.py --int8 or --half)")
        return load_onnx_runner(weights, config, overrides)
    return load_torch_runner(weights, config, overrides, precision)


def load_torch_runner(weights: str | Path, config: str | Path | None = None,
                      overrides: list[str] | tuple[str, ...] = (),
                      precision: Precision = "fp32") -> tuple[TorchRunner, Config]:
    """A checkpoint's model, rebuilt from its config with ``config``/``overrides`` on top, on
    ``train.device``, in ``precision`` as that device supports it."""
    from vision_mtl.engine.checkpoint import checkpoint_config, load_checkpoint, model_from_state  # timm, torchvision: not for ONNX
    state = load_checkpoint(weights)
    base = config_to_dict(checkpoint_config(state, weights))  # an unreadable saved config names the checkpoint
    cfg = load_config(config, overrides, base=base)
    # the checkpoint holds every weight, whatever an override says
    cfg.model.backbone_weights, cfg.model.pretrained = None, False
    model = model_from_state(state, cfg, weights)
    device = resolve_device(cfg.train.device)
    info = ModelInfo.of(model, cfg, state["classes"], state.get("category_ids"))
    return TorchRunner(model.to(device), info, device, resolve_precision(precision, device)), cfg


def load_onnx_runner(weights: str | Path, config: str | Path | None = None,
                     overrides: list[str] | tuple[str, ...] = ()) -> tuple[OnnxRunner, Config]:
    """An exported model and its stored config with ``config``/``overrides`` on top; model settings
    cannot change (they are in the graph)."""
    if not Path(weights).is_file():
        raise CheckpointError(f"ONNX model '{weights}' not found; write one with tools/export_onnx.py")
    runner = OnnxRunner(weights)
    cfg = load_config(config, overrides, base=runner.info.config)
    _check_onnx_config(runner, cfg, weights)
    return runner, cfg


def _check_onnx_config(runner: OnnxRunner, cfg: Config, path: str | Path) -> None:
    """An ONNX graph fixes its model settings and, unless exported --dynamic, its input size."""
    own = flat_keys(config_to_dict(config_from_dict(runner.info.config))["model"])  # as this version reads it
    asked = flat_keys(config_to_dict(cfg)["model"])
    changed = [key for key, value in asked.items() if own.get(key) != value]
    if changed:
        raise ConfigError(f"'{path}' is an exported graph: its model settings are fixed, but model.{changed[0]} "
                          "was changed; export again with that setting, or evaluate the checkpoint")
    if not runner.dynamic_size and cfg.data.image_size != runner.info.image_size:
        raise ConfigError(f"'{path}' takes {runner.info.image_size}x{runner.info.image_size} images, but "
                          f"data.image_size={cfg.data.image_size}; keep the size or export with --dynamic")
