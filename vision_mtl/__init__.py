"""vision_mtl: one shared backbone and feature pyramid, several vision task heads, trained jointly.

``from vision_mtl import Predictor`` is the entry point for inference from Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Predictor"]

if TYPE_CHECKING:
    from vision_mtl.inference.predictor import Predictor


def __getattr__(name: str) -> Any:
    """Import the Predictor (and torch with it) on first use, so ``import vision_mtl`` stays quick."""
    if name == "Predictor":
        from vision_mtl.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'vision_mtl' has no attribute '{name}'")
