"""Evaluate a trained checkpoint on its validation split (or another one given by overrides).

    python tools/evaluate.py --weights runs/shapes/best.pt [--config cfg.yaml] [--out metrics.json] [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vision_mtl.engine.evaluation import evaluate_checkpoint, format_metrics
from vision_mtl.utils.cli import run_tool
from vision_mtl.utils.metrics_log import write_json

logger = logging.getLogger("evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("--config", help="YAML merged over the checkpoint's own config (e.g. another dataset)")
    parser.add_argument("--out", help="metrics JSON path (default: eval_<weights>.json beside the weights)")
    parser.add_argument("overrides", nargs="*", help="config overrides such as data.val.images=...")
    args = parser.parse_intermixed_args()
    metrics = evaluate_checkpoint(args.weights, args.config, args.overrides)
    out = Path(args.out) if args.out else Path(args.weights).with_name(f"eval_{Path(args.weights).stem}.json")
    write_json(out, metrics)
    logger.info("%s\nmetrics written to %s", format_metrics(metrics), out)


if __name__ == "__main__":
    run_tool(main)
