"""Per-image progress records: one JSON line per finished image, appended by each process to its
own part file and flushed after every batch. They are what --resume reads to skip finished
images, and what the merged outputs are built from, so an interrupted and resumed run ends with
the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

Record = dict[str, Any]


class RecordLog:
    """An append-only JSON-lines file. A line cut short by a crash is dropped on opening, so the
    next record starts on a line of its own."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_line(path)
        self.file: IO[str] = open(path, "a", encoding="utf-8")

    def write(self, record: Record) -> None:
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def record_index(records_dir: Path) -> dict[str, tuple[Path, int]]:
    """Where the last complete record of each image is: ``{relative: (part file, byte offset)}``.
    Later records of an image (a retried failure) replace earlier ones."""
    index: dict[str, tuple[Path, int]] = {}
    for part in sorted(records_dir.glob("*.jsonl")):
        for offset, record in _complete_lines(part):
            index[record["file"]] = (part, offset)
    return index


def finished(records_dir: Path) -> set[str]:
    """Images with a successful record: --resume skips them (failed ones are tried again)."""
    done: set[str] = set()
    for part in sorted(records_dir.glob("*.jsonl")):
        for _, record in _complete_lines(part):
            (done.discard if "error" in record else done.add)(record["file"])
    return done


def read_record(part: Path, offset: int) -> Record:
    with open(part, "rb") as f:
        f.seek(offset)
        return json.loads(f.readline())


def _complete_lines(part: Path) -> Iterator[tuple[int, Record]]:
    offset = 0
    with open(part, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                yield offset, json.loads(line)
            offset += len(line)


def _drop_partial_line(path: Path) -> None:
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
