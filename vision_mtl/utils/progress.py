"""Progress bars that stay readable in logs: frequent on a terminal, sparse when piped."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress(iterable: Iterable, **kwargs: Any) -> tqdm:
    """``tqdm`` with a long refresh interval when stderr is not a terminal (CI logs, files)."""
    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
