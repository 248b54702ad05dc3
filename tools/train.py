"""Train a multi-task model.

    python tools/train.py [--config FILE] [key=value ...]   # FILE: configs/shapes.yaml unless given
    python tools/train.py --resume runs/shapes [train.epochs=20]   # continue a stopped run (its folder or last.pt)
    (with data.test sources, best.pt is evaluated on them at the end: <run>/eval/best_test/metrics.json)
    torchrun --nproc_per_node 2 tools/train.py [...]                # DDP over 2 processes
"""

from __future__ import annotations

import argparse
import logging
import sys

from vision_mtl.config import load_config
from vision_mtl.errors import ConfigError
from vision_mtl.evaluation.saved import default_eval_folder, evaluate_weights, save_evaluation
from vision_mtl.training.state import epochs_left, resume_point
from vision_mtl.training.trainer import Trainer
from vision_mtl.utils.cli import DEFAULT_CONFIG, run_tool

logger = logging.getLogger("train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config",
                        help="YAML config over the schema defaults (default: configs/shapes.yaml, the built-in shapes run)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in this folder from its last.pt (the folder or that file)")
    parser.add_argument("overrides", nargs="*", help="config overrides such as train.epochs=5")
    args = parser.parse_intermixed_args()
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config; drop --config (settings that may "
                              "change, such as train.epochs=N, go as overrides)")
        run_dir, state, cfg = resume_point(args.resume, args.overrides)
        if epochs_left(state, cfg) <= 0:  # nothing to do is not an error: a requeued job may resume a finished run
            logger.info("%s already finished %d epochs (train.epochs=%d); nothing to train: raise train.epochs above "
                        "%d to train more", run_dir, state["epoch"], cfg.train.epochs, state["epoch"])
            return
        trainer = Trainer(cfg, resume=state, run_dir=run_dir)
    else:
        trainer = Trainer(load_config(args.config or DEFAULT_CONFIG, args.overrides))
    metrics = trainer.fit()
    if trainer.stopped_by:
        logger.info("stopped by %s; saved %s. Continue with: python tools/train.py --resume %s",
                    trainer.stopped_by, trainer.run_dir / "last.pt", trainer.run_dir)
        sys.exit(130)
    if not trainer.main:
        return
    logger.info("best epoch %s of %s:", metrics.get("epoch"), trainer.run_dir)
    for key, value in metrics.items():
        if key != "epoch" and key.count("/") == 1:
            logger.info("  %-28s %.4f", key, value)
    best = trainer.run_dir / "best.pt"
    logger.info("checkpoint: %s", best)
    if trainer.cfg.data.test:
        test = evaluate_weights(best, split="test", progress=False)
        written = save_evaluation(test, default_eval_folder(best, "test"))
        logger.info("held-out data.test (best.pt):")
        for key, value in test.metrics.items():
            if key.count("/") == 1:
                logger.info("  %-28s %.4f", key, value)
        logger.info("written: %s", written[0])


if __name__ == "__main__":
    run_tool(main)
