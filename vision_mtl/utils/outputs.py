"""Outputs the user names: checked before any work, and a write that fails there (read-only file
system, no permission, a file in the way) reported as one line naming the folder. An output file
is never a folder, has its format's suffix, and replaces an existing file only when forced."""

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


def check_out_file(out: str | Path, suffix: str, overwrite: bool, flag: str = "--out",
                   force: str = "--force") -> None:
    """Refuse, before any work, an output file ``out`` that is a folder, does not end in ``suffix``,
    exists (unless ``overwrite``; ``force`` names how to ask for that) or could not be written.
    Missing folders above it are left to the write to create."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{flag} '{out}' is a folder; name the file to write, e.g. '{out / ('name' + suffix)}'")
    if out.suffix.lower() != suffix:
        raise ConfigError(f"{flag} '{out}' does not end in {suffix}; name a {suffix} file")
    if out.exists() and not overwrite:
        raise ConfigError(f"{flag} '{out}' exists; choose another file, or replace it with {force}")
    check_writable(out.parent, flag)
