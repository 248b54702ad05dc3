"""Evaluate a trained model, checkpoint or exported ONNX, on its validation split (or another one
given by --config/overrides, in any dataset format the loaders read).

    python tools/evaluate.py --weights runs/shapes/best.pt [--config cfg.yaml] [--out DIR] [--precision bf16] [key=value ...]
    python tools/evaluate.py --weights model.onnx data.val.images=... data.val.annotations=...
    python tools/evaluate.py --weights runs/pets3/best.pt --split test   # the config's held-out data.test

Writes ``metrics.json`` (``task/metric`` keys) and, with detection, ``detections.json`` (COCO
results, original image and category ids) into --out: by default ``<run>/eval/<weights stem>/`` for
weights in a run folder (``runs/shapes/eval/best/``), else ``<weights stem>_eval/`` beside them.
Prints the metrics table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vision_mtl.evaluation.saved import default_eval_folder, evaluate_weights, format_metrics, save_evaluation
from vision_mtl.errors import ConfigError
from vision_mtl.utils.cli import add_precision_flag, run_tool
from vision_mtl.utils.outputs import check_writable

logger = logging.getLogger("evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint from tools/train.py or .onnx from tools/export_onnx.py")
    parser.add_argument("--config", help="YAML merged over the model's own config (e.g. another dataset)")
    parser.add_argument("--out", help="output folder (default: <run>/eval/<weights stem>/, or <weights stem>_eval/ "
                                      "beside weights outside a run folder)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="multi-label classification: score at which a class counts as predicted (F1)")
    parser.add_argument("--split", choices=["val", "test"], default="val",
                        help="which split of the config to evaluate (test: data.test, held out from training)")
    add_precision_flag(parser)
    parser.add_argument("overrides", nargs="*", help="config overrides such as data.val.images=...")
    args = parser.parse_intermixed_args()
    out = Path(args.out) if args.out else default_eval_folder(args.weights, args.split)
    if out.suffix == ".json":
        raise ConfigError(f"--out '{out}' names a file; give a folder (metrics.json and detections.json go inside)")
    check_writable(out)
    evaluation = evaluate_weights(args.weights, args.config, args.overrides, args.threshold, precision=args.precision,
                                  split=args.split)
    written = save_evaluation(evaluation, out)
    logger.info("%s\nwritten: %s", format_metrics(evaluation.metrics), ", ".join(map(str, written)))


if __name__ == "__main__":
    run_tool(main)
