"""Speed measurements printed as ratios of candidates timed side by side in one run.

    python tools/benchmark.py model [--imgsz 320] [--batch 8] [--rounds 10] [--config cfg.yaml] [key=value ...]
    python tools/benchmark.py export [--imgsz 128] [--batch 1 8] [--rounds 10] [--weights best.pt] [key=value ...]

model: one multi-task forward vs the three single-task models. export: the exported graph in
onnxruntime (CPU) vs PyTorch eager, network and postprocessing (NMS, argmax) included.
"""

from __future__ import annotations

import argparse
import logging

import torch

from vision_mtl.config import load_config
from vision_mtl.engine.benchmark import benchmark_export, benchmark_model, random_model
from vision_mtl.engine.runners import load_torch_runner
from vision_mtl.utils.cli import run_tool
from vision_mtl.utils.runtime import resolve_device

logger = logging.getLogger("benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["model", "export"],
                        help="model: multi-task vs three single-task models; export: onnxruntime vs torch eager")
    parser.add_argument("--config", help="YAML config whose model section is measured (default: shapes)")
    parser.add_argument("--imgsz", type=int, help="input side (default: model 320, export the config's data.image_size)")
    parser.add_argument("--batch", type=int, nargs="+", help="batch size(s) (default: model 8, export 1 and 8)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--weights", help="export: time this trained checkpoint instead of random weights")
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo", help="export: torch.onnx exporter")
    parser.add_argument("overrides", nargs="*", help="config overrides such as model.backbone=resnet50")
    args = parser.parse_intermixed_args()
    if args.what == "model":
        run_model(args)
    else:
        run_export(args)


def run_model(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    device = resolve_device(cfg.train.device)
    imgsz, batch = args.imgsz or 320, (args.batch or [8])[0]
    logger.info("model benchmark: backbone %s, %dx%d, batch %d, %d rounds, device %s, %d threads",
                cfg.model.backbone, imgsz, imgsz, batch, args.rounds, device, torch.get_num_threads())
    result = benchmark_model(cfg, imgsz, batch, args.rounds, device)
    for key, value in result.items():
        logger.info("  %-28s %.3f", key, value)


def run_export(args: argparse.Namespace) -> None:
    overrides = [*args.overrides, *([f"data.image_size={args.imgsz}"] if args.imgsz else [])]
    if args.weights:
        runner, _ = load_torch_runner(args.weights, args.config, overrides)
        model, info = runner.model, runner.info
    else:
        model, info = random_model(load_config(args.config, overrides))
    for chatty in ("onnxscript", "onnx_ir"):  # the exporter's graph optimiser logs every rewrite at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    logger.info("export benchmark: %s, %dx%d, %d rounds, CPU, %d threads, %s exporter",
                args.weights or f"{info.config['model']['backbone']} (random weights)", info.image_size,
                info.image_size, args.rounds, torch.get_num_threads(), args.exporter)
    for row in benchmark_export(model, info, args.batch or [1, 8], args.rounds, args.exporter):
        logger.info("  batch %-3d torch ms %9.2f   onnxruntime ms %9.2f   ratio onnxruntime / torch %.3f",
                    row["batch"], row["torch ms"], row["onnxruntime ms"], row["ratio onnxruntime / torch"])


if __name__ == "__main__":
    run_tool(main)
