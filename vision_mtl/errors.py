"""User-facing errors: each carries a one-line message that names the problem and the fix.

Tools catch :class:`VisionMTLError` and print the message alone, without a traceback.
"""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
