"""What ``--source`` names, turned into image files with the relative paths the outputs mirror.

A folder is walked recursively; a glob (``photos/**/*.jpg``) is taken relative to its fixed
prefix; a ``.txt`` list names one path per line (relative to the list's folder), taken relative
to their common folder; a single image stands for itself. A folder or glob leaves out the folders
below it that tools/infer.py wrote (they hold its marker), so an ``--out`` inside ``--source`` never
becomes input of the next run.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vision_mtl.data.image_io import IMAGE_SUFFIXES, list_images
from vision_mtl.errors import DataError
from vision_mtl.inference.folder import MARKER

logger = logging.getLogger(__name__)

GLOB_CHARACTERS = "*?["


@dataclass(frozen=True, order=True)
class ImageFile:
    """``relative``: the POSIX path the outputs use for this image (``masks/<relative>.png``)."""

    relative: str
    path: Path


def list_source(source: str | Path) -> list[ImageFile]:
    """The images ``source`` names, sorted by relative path; a one-line error when there are none."""
    text = str(source)
    path = Path(text)
    if any(c in text for c in GLOB_CHARACTERS) and not path.exists():
        files = _from_glob(text)
    elif path.is_dir():
        files = _without_infer_outputs(path, [ImageFile(p.relative_to(path).as_posix(), p) for p in list_images(path)])
    elif path.suffix.lower() == ".txt" and path.is_file():
        files = _from_list(path)
    elif path.is_file():
        files = [ImageFile(path.name, path)]
    else:
        raise DataError(f"source '{source}' does not exist; give a folder, a glob, a .txt list or an image")
    if not files:
        raise DataError(f"no images found in source '{source}' (image suffixes: {', '.join(IMAGE_SUFFIXES[:8])}, ...)")
    duplicates = _first_duplicate(files)
    if duplicates:
        raise DataError(f"source '{source}' names '{duplicates}' twice; each image must appear once")
    return sorted(files)


def _from_glob(pattern: str) -> list[ImageFile]:
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARACTERS)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    paths = [Path(p) for p in glob.glob(pattern, recursive=True)]
    return _without_infer_outputs(root, [ImageFile(p.relative_to(root).as_posix(), p) for p in paths
                                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES])


def _without_infer_outputs(root: Path, files: list[ImageFile]) -> list[ImageFile]:
    """``files`` less those in folders below ``root`` that tools/infer.py wrote (masks and overlays
    of an earlier run are no photos), with a note naming those folders."""

    @functools.cache
    def output_of(folder: Path) -> Path | None:
        if folder == root or folder == folder.parent:
            return None
        return folder if (folder / MARKER).is_file() else output_of(folder.parent)

    outputs = {file: output_of(file.path.parent) for file in files}
    skipped = sorted({str(folder) for folder in outputs.values() if folder is not None})
    if skipped:
        logger.info("source '%s': left out %d image(s) in folder(s) tools/infer.py wrote: %s", root,
                    sum(folder is not None for folder in outputs.values()), ", ".join(skipped))
    return [file for file, folder in outputs.items() if folder is None]


def _from_list(list_file: Path) -> list[ImageFile]:
    """Listed paths are kept even when missing or unreadable: those become errors.log entries."""
    lines = [line.strip() for line in list_file.read_text().splitlines()]
    listed = [Path(line) for line in lines if line and not line.startswith("#")]
    paths = [p if p.is_absolute() else list_file.parent / p for p in listed]
    if not paths:
        return []
    root = Path(os.path.commonpath([p.parent.resolve() for p in paths]))
    return [ImageFile(p.resolve().relative_to(root).as_posix(), p) for p in paths]


def _first_duplicate(files: list[ImageFile]) -> str | None:
    seen: set[str] = set()
    for file in files:
        if file.relative in seen:
            return file.relative
        seen.add(file.relative)
    return None
