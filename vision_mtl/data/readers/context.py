"""What every reader gets besides its own source config: paths, the model's settings, the problem log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vision_mtl.data.image_io import list_images
from vision_mtl.data.problems import ProblemLog
from vision_mtl.errors import DataError


def image_ids(key: str) -> tuple[str, str]:
    """The ids a split file or label list may name an image by: its key without extension
    (``sub/a`` for ``sub/a.jpg``) and its bare stem (``a``)."""
    path = Path(key)
    return path.with_suffix("").as_posix(), path.stem


@dataclass
class ReadContext:
    """Where a source's paths are resolved and what it is read for; ``name`` (``data.train[0] (coco)``)
    starts every message about the source. ``only``: the image ids of the source's ``split_file``
    (None: every image); readers that list a folder skip the others before reading their labels."""

    root: Path
    split: str
    name: str
    tasks: list[str]
    multi_label: bool
    seg_classes: list[str] | None
    problems: ProblemLog
    only: set[str] | None = None

    def path(self, value: str) -> Path:
        """``value`` under ``data.root`` unless it is absolute."""
        return self.root / value

    def folder(self, value: str, key: str) -> Path:
        folder = self.path(value)
        if not folder.is_dir():
            raise DataError(f"{self.name}: {key} folder '{folder}' not found; check '{key}' and data.root")
        return folder

    def file(self, value: str, key: str) -> Path:
        file = self.path(value)
        if not file.is_file():
            raise DataError(f"{self.name}: {key} file '{file}' not found; check '{key}' and data.root")
        return file

    def wanted(self, key: str) -> bool:
        """Whether the image at ``key`` (relative to its images folder) is read: listed, or no list."""
        return self.only is None or not self.only.isdisjoint(image_ids(key))

    def images(self, folder: Path) -> list[Path]:
        """The images under ``folder`` (sorted) that this source reads."""
        return [p for p in list_images(folder) if self.wanted(p.relative_to(folder).as_posix())]
