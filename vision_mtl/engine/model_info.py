"""What a caller needs to know about a trained model, whether it comes as a checkpoint or as ONNX.

An ONNX file carries it in ``metadata_props`` (JSON strings), so the file alone says which tasks
it answers, with which class names, for which input size and normalisation, and with the whole
training config to rebuild the data pipeline for evaluation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from vision_mtl.config import Config, config_to_dict
from vision_mtl.errors import CheckpointError

if TYPE_CHECKING:
    from vision_mtl.models import MultiTaskModel


@dataclass
class ModelInfo:
    """``image_size``: the square letterbox side the model was trained at. ``mean``/``std``: the
    normalisation applied inside the model (inputs are RGB in [0, 1]). ``category_ids[i]``: the
    original COCO id of detection class ``i`` (None without detection). ``config``: the run's config."""

    tasks: list[str]
    classes: dict[str, list[str]]
    image_size: int
    mean: list[float]
    std: list[float]
    multi_label: bool
    category_ids: list[int] | None
    config: dict[str, Any]

    @classmethod
    def of(cls, model: MultiTaskModel, cfg: Config, classes: dict[str, list[str]],
           category_ids: list[int] | None = None) -> ModelInfo:
        return cls(tasks=model.tasks, classes={t: classes[t] for t in model.tasks}, image_size=cfg.data.image_size,
                   mean=[round(v, 6) for v in model.mean.flatten().tolist()], std=[round(v, 6) for v in model.std.flatten().tolist()],
                   multi_label=cfg.model.classification.multi_label, category_ids=category_ids,
                   config=config_to_dict(cfg))

    def to_metadata(self) -> dict[str, str]:
        """One JSON string per field; the config under ``vision_mtl_config``."""
        data = asdict(self)
        return {("vision_mtl_config" if k == "config" else k): json.dumps(v) for k, v in data.items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str) -> ModelInfo:
        names = [("vision_mtl_config" if f.name == "config" else f.name) for f in fields(cls)]
        missing = [n for n in names if n not in props]
        if missing:
            raise CheckpointError(f"'{source}' has no vision_mtl metadata ('{missing[0]}' missing); "
                                  "export it with tools/export_onnx.py")
        return cls(*(json.loads(props[n]) for n in names))
