"""Atomic file writes: a crash, a kill or Ctrl-C never leaves half a file under the final name.

The data goes to a uniquely named temporary file beside the target (so two writers never share
one), then is renamed onto the target. With ``fsync`` (checkpoints, exports) the file and then its
folder are synced, so the new content and the rename survive a power cut too. A writer killed
before the rename leaves only a ``.<name>.*.tmp`` file, which :func:`remove_stale_temps` clears.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """A fresh temporary name beside ``path`` for a writer that takes a file name: renamed onto
    ``path`` if the block ends without error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the usual permissions
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(path.parent)
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


def remove_stale_temps(folder: str | Path, name: str) -> list[Path]:
    """Delete the temporary files a killed writer of ``folder/name`` left behind; returns them."""
    stale = sorted(Path(folder).glob(f".{name}.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (a folder some file systems cannot open: skipped)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
