"""Shared behaviour of the command-line tools: logging set-up, checked integer flags and one-line user errors."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from vision_mtl.errors import VisionMTLError, check_int, first_line


# The built-in run, what tools use without --config: the only config that asks for generated data.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes.yaml"


def run_tool(main: Callable[[], object]) -> None:
    """Run a tool's ``main``: user errors print as ``error: ...`` and exit 2, Ctrl-C exits 130."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except VisionMTLError as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def int_flag(flag: str, minimum: int, multiple: int = 1) -> Callable[[str], int]:
    """An argparse ``type`` for an integer flag of at least ``minimum`` (a multiple of ``multiple``).
    Anything else raises :func:`~vision_mtl.errors.check_int`'s one-line error, which argparse lets
    through to :func:`run_tool` (it only catches ValueError, TypeError and ArgumentTypeError)."""

    def parse(text: str) -> int:
        try:
            value: int | str = int(text)
        except ValueError:
            value = text
        return check_int(flag, value, minimum, multiple)

    return parse


def add_precision_flag(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16|auto`` (default fp32) for tools that run a checkpoint."""
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help="checkpoints: bf16 autocast where the CPU/GPU computes bfloat16 natively "
                             "(auto, bf16), fp32 elsewhere")
