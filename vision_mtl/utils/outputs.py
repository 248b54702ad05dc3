"""Output folders the user names: checked before any work, and a write that fails there (read-only
file system, no permission, a file in the way) reported as one line naming the folder."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vision_mtl.errors import ConfigError, first_line


@contextmanager
def writing(folder: str | Path, flag: str = "--out") -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into a :class:`ConfigError` naming ``folder``."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or first_line(exc)
        if exc.filename and str(exc.filename) != str(folder):
            reason += f": '{exc.filename}'"
        raise ConfigError(f"{flag}: cannot write in '{folder}' ({reason}); choose a place you can write to") from exc


def check_writable(folder: str | Path, flag: str = "--out") -> None:
    """Raise the one-line error of :func:`writing` now, before any work, when ``folder`` could not
    be created or written: a file stands in its path, or its nearest existing folder is not
    writable. Leaves nothing behind."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    with writing(folder, flag):
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        tempfile.TemporaryFile(dir=existing).close()
