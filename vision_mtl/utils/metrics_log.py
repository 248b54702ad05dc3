"""Per-epoch metrics as CSV (one row per epoch) and the best epoch's metrics as JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from vision_mtl.utils.atomic import atomic_open, write_atomic


class MetricsLog:
    """Appends epoch rows to ``metrics.csv`` (rewriting the header when new columns appear)."""

    def __init__(self, run_dir: Path):
        self.csv_path = run_dir / "metrics.csv"
        self.rows: list[dict[str, float]] = []
        if self.csv_path.is_file():  # a resumed run keeps its history
            with self.csv_path.open(newline="") as fh:
                self.rows = [{k: int(v) if k == "epoch" else float(v) for k, v in row.items() if v != ""}
                             for row in csv.DictReader(fh)]

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        with atomic_open(self.csv_path) as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
