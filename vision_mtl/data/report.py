"""A dataset's health report without training: images, labels per task and class, problems by kind."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import DataLoader

from vision_mtl.data.dataset import MultiTaskDataset
from vision_mtl.data.problems import ACTIONS
from vision_mtl.data.sample import IGNORE_INDEX, Sample

TASK_ORDER = ("detection", "segmentation", "classification")


@dataclass
class SplitReport:
    """Counts for one split. ``images[task][c]``: images with class ``c``; ``objects[task][c]``: boxes
    (detection) or painted objects (segmentation from instances)."""

    name: str
    sources: list[tuple[str, int]]
    total: int
    classes: dict[str, list[str]]
    labelled: Counter = field(default_factory=Counter)
    images: dict[str, Counter] = field(default_factory=dict)
    objects: dict[str, Counter] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)
    decoded: bool = False


def split_report(dataset: MultiTaskDataset, decode: bool = False, num_workers: int = 0) -> SplitReport:
    """Count a split's labels (mask files are read for their classes); with ``decode`` every image
    is decoded first, which finds the problems only decoding reveals (truncated files, sizes)."""
    if decode:
        for _ in DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity):
            pass
    report = SplitReport(dataset.name, [(s.name, len(s.records)) for s in dataset.sources], len(dataset),
                         dataset.classes, decoded=decode)
    tasks = [t for t in TASK_ORDER if t in dataset.tasks]
    report.images = {t: Counter() for t in tasks}
    report.objects = {t: Counter() for t in tasks}
    for index in range(len(dataset)):
        labels = dataset.index_labels(index)
        mask = dataset.original_mask(index) if "segmentation" not in labels else None
        if mask is not None:
            values = np.unique(mask)
            labels["segmentation"] = values[values != IGNORE_INDEX].tolist()
        report.labelled.update(dataset.labelled_for(index))
        for task, ids in labels.items():
            names = [dataset.classes[task][i] for i in ids]
            report.objects[task].update(names)
            report.images[task].update(set(names))
    report.problems = dataset.problem_counts()
    return report


def _identity(sample: Sample) -> Sample:
    return sample


def format_report(report: SplitReport) -> str:
    """A plain-text table: sources, labelled images per task, then per class and task the images
    (and objects) that carry it, then the problems by kind."""
    decoded = "" if report.decoded else " (not decoded; --decode checks them)"
    lines = [f"{report.name}: {report.total} images{decoded}"]
    lines += [f"  {name:<40} {count:>7} images" for name, count in report.sources]
    lines.append("  labelled: " + ", ".join(f"{t} {report.labelled[t]}" for t in report.images))
    columns = list(report.images)
    header = f"  {'class':<24}" + "".join(f"{t + (' img/obj' if t != 'classification' else ' img'):>24}"
                                          for t in columns)
    lines += ["", header]
    # background is not an object: instance masks never count it, so it gets no row
    names = [n for n in dict.fromkeys(n for t in columns for n in report.classes[t]) if n != "background"]
    for name in names:
        cells = []
        for task in columns:
            if name not in report.classes[task]:
                cells.append(f"{'-':>24}")
            elif task == "classification":
                cells.append(f"{report.images[task][name]:>24}")
            else:
                cells.append(f"{f'{report.images[task][name]} / {report.objects[task][name]}':>24}")
        lines.append(f"  {name:<24}" + "".join(cells))
    lines.append("")
    if report.problems:
        lines.append("  problems:")
        lines += [f"    {kind:<36} {n:>6}  ({ACTIONS[kind]})" for kind, n in sorted(report.problems.items())]
    else:
        lines.append("  problems: none")
    return "\n".join(lines)
