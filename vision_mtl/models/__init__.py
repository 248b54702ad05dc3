"""Networks: backbone, neck, task heads and the multi-task model that joins them."""

from vision_mtl.models.multitask import HEADS, MultiTaskModel, build_model

__all__ = ["HEADS", "MultiTaskModel", "build_model"]
