"""ImageFolder layout: one sub-folder per class, its images (at any depth) labelled with the folder name."""

from __future__ import annotations

from vision_mtl.config import SourceConfig
from vision_mtl.data.image_io import list_images
from vision_mtl.data.readers.context import ReadContext
from vision_mtl.data.records import Record, SourceIndex
from vision_mtl.errors import DataError


def read(cfg: SourceConfig, ctx: ReadContext) -> SourceIndex:
    """Format ``imagefolder``: ``images/<class>/**/<image>``; classes are the sub-folder names, sorted."""
    root = ctx.folder(cfg.images, "images")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise DataError(f"{ctx.name}: '{root}' has no class sub-folders; imagefolder expects images/<class>/<image>")
    found = [(folder.name, path) for folder in class_dirs for path in list_images(folder)
             if ctx.wanted(path.relative_to(root).as_posix())]
    records = [Record(path, path.relative_to(root).as_posix(), i, classes=[name])
               for i, (name, path) in enumerate(found, start=1)]
    return SourceIndex(ctx.name, records, {"classification"},
                       {"classification": cfg.classes or [d.name for d in class_dirs]},
                       declared={"classification"} if cfg.classes else set())
