"""Side-by-side timing: candidates run interleaved in one process, so machine noise hits all alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved_timings(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
                        sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each candidate; every round runs all candidates, in a rotating order."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync()
            start = time.perf_counter()
            candidates[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times
