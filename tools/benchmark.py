"""Speed measurements printed as ratios of candidates timed side by side in one run.

    python tools/benchmark.py model [--imgsz 320] [--batch 8] [--rounds 10] [--config cfg.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import logging

import torch

from vision_mtl.config import load_config
from vision_mtl.engine.benchmark import benchmark_model
from vision_mtl.utils.cli import run_tool
from vision_mtl.utils.runtime import resolve_device

logger = logging.getLogger("benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["model"], help="model: one multi-task forward vs three single-task models")
    parser.add_argument("--config", help="YAML config whose model section is measured (default: shapes)")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="config overrides such as model.backbone=resnet50")
    args = parser.parse_intermixed_args()
    cfg = load_config(args.config, args.overrides)
    device = resolve_device(cfg.train.device)
    logger.info("model benchmark: backbone %s, %dx%d, batch %d, %d rounds, device %s, %d threads",
                cfg.model.backbone, args.imgsz, args.imgsz, args.batch, args.rounds, device, torch.get_num_threads())
    result = benchmark_model(cfg, args.imgsz, args.batch, args.rounds, device)
    for key, value in result.items():
        logger.info("  %-28s %.3f", key, value)


if __name__ == "__main__":
    run_tool(main)
