"""From a split's source configs to :class:`SourceIndex` objects: one reader per format."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from vision_mtl.config import Config, SourceConfig
from vision_mtl.data.readers import coco, files, imagefolder, label_csv, masks, voc, yolo
from vision_mtl.data.problems import ProblemLog
from vision_mtl.data.readers.context import ReadContext
from vision_mtl.data.readers.lists import add_image_labels, select, split_ids, take_fraction
from vision_mtl.data.records import SourceIndex
from vision_mtl.errors import DataError

READERS: dict[str, Callable[[SourceConfig, ReadContext], SourceIndex]] = {
    "files": files.read,
    "coco": coco.read,
    "yolo": yolo.read,
    "voc": voc.read,
    "imagefolder": imagefolder.read,
    "csv": label_csv.read,
    "masks": masks.read,
}


@dataclass
class Split:
    """The sources of one split (``data.train`` or ``data.val``) and the problems met reading them."""

    name: str
    sources: list[SourceIndex]
    problems: ProblemLog


def read_split(cfg: Config, split: str) -> Split:
    """Read every source listed under ``data.<split>``; paths resolve under ``data.root``. Training keeps
    ``data.train_fraction`` of each source's images (nested: a smaller fraction is a subset of a larger one)."""
    problems = ProblemLog()
    sources = []
    for i, source in enumerate(getattr(cfg.data, split)):
        ctx = ReadContext(Path(cfg.data.root), split, f"data.{split}[{i}] ({source.format})", cfg.model.tasks,
                          cfg.model.classification.multi_label, cfg.data.seg_classes, problems)
        index = read_source(source, ctx)
        if split == "train" and cfg.data.train_fraction < 1:
            index.records = take_fraction(sorted(index.records, key=lambda r: r.key), [0, cfg.data.train_fraction],
                                          source.fraction_seed)
        sources.append(index)
    return Split(f"data.{split}", sources, problems)


def require_targets(split: Split, tasks: list[str]) -> None:
    """Stop when a split has nothing to learn one of ``tasks`` from (every label of it malformed,
    of unknown classes or empty), naming the label problems found rather than training on nothing.

    A split without images, or whose sources simply do not label a task, is left to the messages
    that say so (the dataset's and :func:`discover_classes`').
    """
    if not any(source.records for source in split.sources):
        return
    found = split.problems.label_summary()
    for task in tasks:
        providers = [source for source in split.sources if task in source.tasks]
        if any(source.has_target(record, task) for source in providers for record in source.records):
            continue
        if not providers and not found:
            continue
        labelled = sum(task in source.labelled(record) for source in providers for record in source.records)
        why = found or (f"its {labelled} labelled image(s) hold none" if labelled else "no image is labelled for it")
        raise DataError(f"{split.name}: no image has a usable {task} label ({why}); fix the labels or drop {task} "
                        "from model.tasks")


def read_source(cfg: SourceConfig, ctx: ReadContext) -> SourceIndex:
    """One source, used for the tasks it is configured for (default: every task it labels): the
    reader's records, narrowed by ``split_file`` and ``fraction``, classes from ``label_list`` or
    ``label_pattern`` added."""
    ctx = replace(ctx, only=split_ids(cfg, ctx))
    index = READERS[cfg.format](cfg, ctx)
    select(index, cfg, ctx)
    add_image_labels(index, cfg, ctx)
    wanted = set(cfg.tasks) if cfg.tasks is not None else index.provides
    missing = wanted - index.provides
    if missing:
        hint = ""
        if "classification" in missing and cfg.format in ("coco", "yolo"):
            hint = ("; the categories present are a multi-label target: set model.classification.multi_label=true"
                    " (or give a coco source 'labels' or 'label_field')")
        found = ctx.problems.label_summary()
        if found:  # e.g. a YOLO source whose polygon lines are all malformed provides no segmentation
            hint = f" (label problems met reading data.{ctx.split}: {found}){hint}"
        raise DataError(f"{ctx.name} does not label {', '.join(sorted(missing))}; it labels "
                        f"{', '.join(sorted(index.provides)) or 'nothing'}{hint}")
    index.tasks = wanted & set(ctx.tasks)
    index.weight = cfg.weight
    index.class_map = {k: v for k, v in (cfg.class_map or {}).items() if isinstance(k, str)}
    return index
