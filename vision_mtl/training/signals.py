"""SIGINT and SIGTERM during training: finish the current step, save, then stop cleanly.

A second Ctrl-C while the save is under way is ignored rather than leaving the run without a
checkpoint; the checkpoint write itself is atomic either way. DataLoader workers leave both signals
to the main process (``data/loader.py``), so a SIGTERM to the whole process group (Slurm,
Kubernetes) ends the run the same way instead of killing a worker under it.
"""

from __future__ import annotations

import signal
from types import FrameType, TracebackType


class StopSignals:
    """``with StopSignals() as stop:`` ... ``if stop.requested:`` save and leave the loop.
    Handlers are installed only in the main thread and restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave the default behaviour
            self._previous.clear()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = self.requested or signal.Signals(signum).name
