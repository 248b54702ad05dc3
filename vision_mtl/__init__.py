"""vision_mtl: one shared backbone and feature pyramid, several vision task heads, trained jointly."""

__version__ = "0.1.0"
