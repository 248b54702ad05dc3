"""Shared behaviour of the command-line tools: logging set-up and one-line user errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

from vision_mtl.errors import VisionMTLError


# The built-in run, what tools use without --config: the only config that asks for generated data.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes.yaml"


def run_tool(main: Callable[[], object]) -> None:
    """Run a tool's ``main``: user errors print as ``error: ...`` and exit 2, Ctrl-C exits 130."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except VisionMTLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
