"""What every reader gets besides its own source config: paths, the model's settings, the problem log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vision_mtl.data.problems import ProblemLog
from vision_mtl.errors import DataError


@dataclass
class ReadContext:
    """Where a source's paths are resolved and what it is read for; ``name`` (``data.train[0] (coco)``)
    starts every message about the source."""

    root: Path
    split: str
    name: str
    tasks: list[str]
    multi_label: bool
    seg_classes: list[str] | None
    problems: ProblemLog

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
