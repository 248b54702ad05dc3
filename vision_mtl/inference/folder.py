"""The output folder of a folder-inference run: its layout, and its ownership.

A run marks the folder it creates with a settings file; it refuses a non-empty folder without
that mark (never touching a user's files), refuses its own earlier run unless asked to resume,
and refuses to resume with other settings (the outputs would mix two models or thresholds).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vision_mtl.errors import ConfigError, first_line
from vision_mtl.utils.atomic import write_atomic

MARKER = ".vision_mtl_infer.json"


@dataclass(frozen=True)
class InferSettings:
    """Everything that shapes the outputs: a resumed run must match it."""

    weights: str
    source: str
    tasks: list[str]
    image_size: int
    conf: float
    overlays: bool


class OutputFolder:
    """``masks/<relative>.png``, ``overlays/<relative>.jpg``, ``records/`` (per-image progress) and
    the merged files at the top (detections.json, images.json, classification.csv, errors.log,
    summary.json). ``<relative>`` is the image's path under the source, suffix included, so
    ``a.jpg`` and ``a.png`` never collide."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.records = self.root / "records"

    def mask_path(self, relative: str) -> Path:
        return self.root / "masks" / f"{relative}.png"

    def overlay_path(self, relative: str) -> Path:
        return self.root / "overlays" / f"{relative}.jpg"

    def claim(self, settings: InferSettings, resume: bool) -> bool:
        """Make the folder this run's. Returns True when an earlier run is being resumed."""
        marker = self.root / MARKER
        if marker.is_file():
            if not resume:
                raise ConfigError(f"--out '{self.root}' holds an earlier inference run; pass --resume to continue "
                                  "it, or choose another --out")
            self.check(settings)
            return True
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise ConfigError(f"--out '{self.root}' exists and was not made by tools/infer.py; choose a new or empty "
                              "folder (nothing in it was touched)")
        self.records.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, json.dumps(asdict(settings), indent=2))
        return False

    def check(self, settings: InferSettings) -> None:
        """The folder's run was made with ``settings``; else a one-line error naming the difference."""
        try:
            saved = json.loads((self.root / MARKER).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read '{self.root / MARKER}' ({first_line(exc)}); choose another --out") from exc
        for field in fields(InferSettings):
            ours, theirs = getattr(settings, field.name), saved.get(field.name)
            if ours != theirs:
                raise ConfigError(f"--resume: the run in '{self.root}' used {field.name}={theirs}, not {ours}; "
                                  "resume with the same settings, or choose another --out")
