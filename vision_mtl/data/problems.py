"""Bad files: each problem is repaired or skipped, reported as one warning line per file, and counted.

Problems found while indexing a split (missing files, label lines that do not parse, boxes out of
bounds, ...) go into a :class:`ProblemLog`. Problems only decoding can reveal (a truncated image, a
mask of the wrong size) are found in DataLoader workers; :class:`LoadProblems` keeps their flags in
shared memory so each file is still reported once, whichever worker and epoch meets it.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch

logger = logging.getLogger(__name__)

# kind -> what was done about it
MISSING_IMAGE = "missing image"
UNREADABLE_IMAGE = "unreadable image"
MISSING_LABELS = "missing label file"
MALFORMED_LABEL = "malformed label"
BOX_OUT_OF_BOUNDS = "box out of bounds"
DEGENERATE_BOX = "degenerate box"
SHORT_POLYGON = "polygon with < 3 points"
UNKNOWN_CLASS = "unknown class"
SEVERAL_LABELS = "several labels, single-label task"
MASK_SIZE = "mask size differs from image"
UNREADABLE_MASK = "unreadable mask"
LABEL_SIZE = "annotated size differs from image"
UNLISTED_IMAGE = "annotation of an image not in 'images'"
SHARED_IMAGE_ID = "image id shared with another image"
CONFLICTING_ROWS = "image in rows with different labels"
OUTSIDE_FOLDER = "file name leads outside the output folder"
UNREADABLE_LABELS = "unreadable label file"
NO_PATTERN_MATCH = "file name does not match label_pattern"

ACTIONS: dict[str, str] = {
    MISSING_IMAGE: "image skipped",
    UNREADABLE_IMAGE: "image skipped",
    MISSING_LABELS: "image unlabelled",
    MALFORMED_LABEL: "dropped",
    BOX_OUT_OF_BOUNDS: "clipped",
    DEGENERATE_BOX: "dropped",
    SHORT_POLYGON: "dropped",
    UNKNOWN_CLASS: "dropped",
    SEVERAL_LABELS: "image unlabelled",
    MASK_SIZE: "mask skipped",
    UNREADABLE_MASK: "mask skipped",
    LABEL_SIZE: "boxes and mask skipped",
    UNLISTED_IMAGE: "dropped",
    SHARED_IMAGE_ID: "image unlabelled",
    CONFLICTING_ROWS: "image unlabelled",
    OUTSIDE_FOLDER: "image skipped",
    UNREADABLE_LABELS: "image unlabelled",
    NO_PATTERN_MATCH: "image unlabelled",
}

# Problems with an image itself; every other kind is a problem with its labels.
IMAGE_KINDS: tuple[str, ...] = (MISSING_IMAGE, UNREADABLE_IMAGE)

# Problems found at load time, one bit each in LoadProblems.
LOAD_KINDS: tuple[str, ...] = (UNREADABLE_IMAGE, UNREADABLE_MASK, MASK_SIZE, LABEL_SIZE, UNKNOWN_CLASS)


def describe(counts: Counter) -> str:
    """``2 degenerate box (dropped), 1 unknown class (dropped)``."""
    return ", ".join(f"{n} {kind} ({ACTIONS[kind]})" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


class ProblemLog:
    """Problems found while indexing one split, grouped by the file they belong to."""

    def __init__(self) -> None:
        self.by_file: dict[str, Counter] = {}

    def add(self, file: object, kind: str, count: int = 1) -> None:
        if count:
            self.by_file.setdefault(str(file), Counter())[kind] += count

    def counts(self) -> Counter:
        """Number of occurrences of each kind over the whole split."""
        return sum(self.by_file.values(), Counter())

    def label_summary(self) -> str:
        """The label problems (all but those of images), e.g. ``12 malformed label (dropped) in 3 file(s),
        first: a.txt``; empty when there are none."""
        files = {file: Counter({k: n for k, n in counts.items() if k not in IMAGE_KINDS})
                 for file, counts in self.by_file.items()}
        files = {file: counts for file, counts in files.items() if counts}
        if not files:
            return ""
        return f"{describe(sum(files.values(), Counter()))} in {len(files)} file(s), first: {next(iter(files))}"

    def emit(self, split: str) -> None:
        """One warning line per file, then a summary line by kind."""
        for file, counts in self.by_file.items():
            logger.warning("%s: %s: %s", split, file, describe(counts))
        if self.by_file:
            logger.warning("%s: %d file(s) with problems: %s", split, len(self.by_file), describe(self.counts()))


class LoadProblems:
    """Per-image bit flags of load-time problems, in shared memory (visible to every worker)."""

    def __init__(self, size: int, split: str):
        self.flags = torch.zeros(size, dtype=torch.int16).share_memory_()
        self.split = split

    def report(self, index: int, kind: str, file: object, detail: str = "") -> None:
        """Flag ``kind`` for image ``index``; the first time, log one warning line."""
        bit = 1 << LOAD_KINDS.index(kind)
        if int(self.flags[index]) & bit:
            return
        self.flags[index] |= bit
        logger.warning("%s: %s: %s (%s)%s", self.split, file, kind, ACTIONS[kind], f": {detail}" if detail else "")

    def has(self, index: int, kind: str) -> bool:
        return bool(int(self.flags[index]) & (1 << LOAD_KINDS.index(kind)))

    def counts(self) -> Counter:
        flags = self.flags.tolist()
        return Counter({kind: n for i, kind in enumerate(LOAD_KINDS) if (n := sum(f >> i & 1 for f in flags))})
