"""Check every CUDA path of the project in one go, on a GPU machine (about 8 minutes on one H100).

    python tools/check_cuda.py [--out runs/check_cuda] [--budget 450]
    python tools/check_cuda.py --dry-run      # anywhere: checks each step would start (< 1 min)

Steps, each a subprocess with its own timeout inside --budget seconds, run in this order (a failed,
timed-out or skipped one is recorded and the next starts): the environment; a one-process nccl
group, alone and under torchrun; pytest -k cuda; a training smoke (train.amp=fp16,
mtl.balancer=pcgrad); benchmark.py augment --decode (coco128 when ../shared/datasets/coco128 exists,
else synthetic shapes); benchmark.py engine with pcgrad (fp32, bf16, fp16); ONNX export (float32
and --half) of the smoke's checkpoint; benchmark.py infer on it; engine with uncertainty. Writes
check_cuda_report.md and check_cuda_report.json in --out, each step's output in --out/logs/
(--out/work/ is the check's scratch, replaced each run). Exits 1 when a step did not pass.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from vision_mtl.benchmarks.cuda_check import DRY_OK, PASSED, build_steps, dry_run_steps, run_steps, write_report
from vision_mtl.utils.cli import run_tool

logger = logging.getLogger("check_cuda")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/check_cuda"), help="report folder")
    parser.add_argument("--budget", type=float, default=450, help="seconds for all steps together")
    parser.add_argument("--dry-run", action="store_true", help="only check that every step would start")
    args = parser.parse_args()
    out = args.out.resolve()
    start = time.perf_counter()
    steps = build_steps(out)
    outcomes = dry_run_steps(steps, out) if args.dry_run else run_steps(steps, out, args.budget)
    md, _ = write_report(outcomes, out, args.dry_run, time.perf_counter() - start)
    for outcome in outcomes:
        logger.info("  %-20s %-14s %6.1f s  %s", outcome.name, outcome.status, outcome.seconds, outcome.note)
    logger.info("report: %s (and .json)", md)
    if any(outcome.status not in (PASSED, DRY_OK) for outcome in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    run_tool(main)
