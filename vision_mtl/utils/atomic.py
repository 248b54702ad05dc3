"""Atomic file writes: a crash or Ctrl-C never leaves half a file under the final name."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """A temporary name beside ``path`` for a writer that takes a file name: renamed onto ``path``
    (after ``fsync``, when asked) if the block ends without error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", fsync: bool = False) -> Iterator[IO]:
    """A file opened for writing under a temporary name beside ``path`` and renamed onto it when
    the block ends without error (text mode: UTF-8, no newline translation)."""
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    with atomic_path(path, fsync) as tmp, open(tmp, mode, **text) as f:
        yield f


def write_atomic(path: str | Path, data: str | bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", fsync) as f:
        f.write(data.encode() if isinstance(data, str) else data)
