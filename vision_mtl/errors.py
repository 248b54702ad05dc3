"""User-facing errors: each carries a one-line message that names the problem and the fix.

Tools catch :class:`VisionMTLError` and print the message alone, without a traceback.
"""

from __future__ import annotations

import re

# Terminal escape sequences (colours, cursor moves) that libraries such as torch put in messages.
ANSI_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message without terminal escape codes, or its type name
    when the message is empty."""
    text = ANSI_ESCAPE.sub("", str(exc)).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class VisionMTLError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class ConfigError(VisionMTLError):
    """An unknown key, a wrong type or an inconsistent value in the configuration."""


class DataError(VisionMTLError):
    """A missing dataset path, an unreadable file or labels that contradict each other."""


class ModelError(VisionMTLError):
    """A backbone that does not exist or weights that do not fit it."""


class CheckpointError(VisionMTLError):
    """A checkpoint that is missing, corrupt or made for another model."""


class ExportError(VisionMTLError):
    """An export that failed, or an exported graph whose answers differ from PyTorch's."""


def check_int(name: str, value: int, minimum: int, multiple: int = 1) -> int:
    """``value`` when it is an integer >= ``minimum`` (and a multiple of ``multiple``); else a
    :class:`ConfigError` naming ``name`` (a flag or a parameter) and what it accepts."""
    accepts = f"an integer >= {minimum}" + (f" and a multiple of {multiple}" if multiple > 1 else "")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value % multiple:
        raise ConfigError(f"{name}={value!r} is not accepted; give {accepts}")
    return value
