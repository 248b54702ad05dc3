"""Train a multi-task model.

    python tools/train.py [--config FILE] [key=value ...]   # FILE: configs/shapes.yaml unless given
    python tools/train.py --resume runs/shapes          # continue an interrupted run
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vision_mtl.config import load_config
from vision_mtl.engine.checkpoint import checkpoint_config, load_checkpoint
from vision_mtl.training.trainer import Trainer
from vision_mtl.utils.cli import run_tool

logger = logging.getLogger("train")

# The built-in run: the only config that asks for generated (synthetic) data.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="YAML config over the schema defaults (default: configs/shapes.yaml, the built-in shapes run)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this folder from its last.pt")
    parser.add_argument("overrides", nargs="*", help="config overrides such as train.epochs=5")
    args = parser.parse_intermixed_args()
    if args.resume:
        run_dir = Path(args.resume)
        state = load_checkpoint(run_dir / "last.pt")
        trainer = Trainer(checkpoint_config(state, run_dir / "last.pt"), resume=state, run_dir=run_dir)
    else:
        trainer = Trainer(load_config(args.config, args.overrides))
    try:
        metrics = trainer.fit()
    except KeyboardInterrupt:
        logger.info("interrupted; continue with: python tools/train.py --resume %s", trainer.run_dir)
        raise
    logger.info("best epoch %s of %s:", metrics.get("epoch"), trainer.run_dir)
    for key, value in metrics.items():
        if key != "epoch" and key.count("/") == 1:
            logger.info("  %-28s %.4f", key, value)
    logger.info("checkpoint: %s", trainer.run_dir / "best.pt")


if __name__ == "__main__":
    run_tool(main)
