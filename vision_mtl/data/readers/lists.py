"""What any source can add to its reader's records: a split file and a fraction choose the images,
a label list or a file-name pattern gives their image-level classes.

Images are named by id: the path relative to the images folder without extension, or the bare file
stem (``image_ids``). Each problem is counted against the list file, so a list missing hundreds of
images is one warning line, not hundreds.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vision_mtl.config import SourceConfig
from vision_mtl.data import problems as kinds
from vision_mtl.data.readers.context import ReadContext, image_ids
from vision_mtl.data.records import Record, SourceIndex


def read_word_lines(path: Path) -> list[list[str]]:
    """The whitespace-separated words of each line of ``path``; blank lines and ``#`` comments skipped."""
    lines = (line.split("#", 1)[0].split() for line in path.read_text(encoding="utf-8-sig").splitlines())
    return [words for words in lines if words]


def split_ids(cfg: SourceConfig, ctx: ReadContext) -> set[str] | None:
    """The image ids of the source's ``split_file`` (the first word of each line), or None without one.
    With a ``fraction`` too, only that share of the ids: the reader then never reads, nor reports
    problems of, the images the fraction leaves to another split."""
    if not cfg.split_file:
        return None
    ids = sorted({words[0] for words in read_word_lines(ctx.file(cfg.split_file, "split_file"))})
    return set(take_fraction(ids, cfg.fraction, cfg.fraction_seed) if cfg.fraction is not None else ids)


def take_fraction(items: list, fraction: list[float], seed: int) -> list:
    """``[start, end)`` of ``items`` (given sorted) after a shuffle seeded by ``seed``, in their order;
    with one seed, [0, a] lies inside [0, b] for a < b (nested training subsets)."""
    shuffled = np.random.default_rng(seed).permutation(len(items))
    start, end = (round(f * len(items)) for f in fraction)
    return [items[i] for i in sorted(shuffled[start:end])]


def select(index: SourceIndex, cfg: SourceConfig, ctx: ReadContext) -> None:
    """Keep the records ``ctx.only`` lists (the ids not found are one count against the split file;
    the fraction is already applied to those ids), or else the ``fraction`` of the records, by key."""
    if ctx.only is not None:
        index.records = [r for r in index.records if ctx.wanted(r.key)]
        found = {i for r in index.records for i in image_ids(r.key)}
        ctx.problems.add(ctx.path(cfg.split_file), kinds.MISSING_IMAGE, len(ctx.only - found))
    elif cfg.fraction is not None:
        index.records = take_fraction(sorted(index.records, key=lambda r: r.key), cfg.fraction, cfg.fraction_seed)


def add_image_labels(index: SourceIndex, cfg: SourceConfig, ctx: ReadContext) -> None:
    """Classes from ``label_list`` + ``label_ids`` or ``label_pattern`` replace whatever the reader
    found; the list of classification classes is the names seen, sorted."""
    if cfg.label_list:
        _from_list(index.records, cfg, ctx)
    elif cfg.label_pattern:
        _from_pattern(index.records, re.compile(cfg.label_pattern), ctx)
    else:
        return
    index.provides.add("classification")
    index.declared.discard("classification")
    index.classes["classification"] = sorted({n for r in index.records for n in r.classes or ()})


def _from_list(records: list[Record], cfg: SourceConfig, ctx: ReadContext) -> None:
    """``image-id class-id ...`` per line (later words ignored, as in Oxford Pets' list.txt); an image
    the list misses, or whose class id ``label_ids`` lacks, is unlabelled for classification."""
    path = ctx.file(cfg.label_list, "label_list")
    class_of: dict[str, str | None] = {}
    for words in read_word_lines(path):
        if len(words) < 2:
            ctx.problems.add(path, kinds.MALFORMED_LABEL)
            continue
        try:
            class_of[words[0]] = cfg.label_ids.get(int(words[1]))
        except ValueError:
            class_of[words[0]] = None
    for record in records:
        ids = [i for i in image_ids(record.key) if i in class_of]
        name = class_of[ids[0]] if ids else None
        record.classes = [name] if name is not None else None
        if not ids:
            ctx.problems.add(path, kinds.MISSING_LABELS)
        elif name is None:
            ctx.problems.add(path, kinds.UNKNOWN_CLASS)


def _from_pattern(records: list[Record], pattern: re.Pattern, ctx: ReadContext) -> None:
    """The first group of ``pattern`` matched (``re.fullmatch``) on the file stem is the class."""
    for record in records:
        match = pattern.fullmatch(Path(record.key).stem)
        record.classes = [match.group(1)] if match and match.group(1) else None
        if record.classes is None:
            ctx.problems.add(record.path, kinds.NO_PATTERN_MATCH)
