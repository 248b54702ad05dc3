"""Train each single-task model and the multi-task model under several balancers and sharing schemes on
the same budget, then write a table of every headline metric, Δm, parameters, training and inference time.

    python tools/compare_mtl.py [--config FILE] [--balancers fixed uncertainty pcgrad] [--schemes hard neck]
                                [--run NAME key=value ...] [--out runs/compare] [key=value ...]

Overrides after the flags apply to every run (e.g. train.epochs=6); a --run takes every key=value
after its NAME up to the next flag, so put the overrides for every run before it or end it with a
flag. Every run's config is checked before the first one trains. Each run trains into --out/NAME;
a rerun reuses the runs that finished and resumes one that was stopped, so the comparison can be
interrupted, and --only trains a part of them (in parallel processes, say); --only, like --run,
takes every later word, so it comes last. The tables go to --out/compare.md and --out/compare.csv.
Label scarcity: data.train_fraction=0.25 trains every run on the same seeded quarter of the training
images (a subset of the half that 0.5 takes), e.g. --out runs/cmp25 data.train_fraction=0.25.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vision_mtl.benchmarks.compare_mtl import (check_variants, compare_table, measure_times, plan_variants, run_variant,
                                               write_tables)
from vision_mtl.config import load_config
from vision_mtl.errors import ConfigError
from vision_mtl.utils.cli import DEFAULT_CONFIG, int_flag, run_tool

logger = logging.getLogger("compare_mtl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config every run starts from (default: shapes)")
    parser.add_argument("--balancers", nargs="+", default=["fixed"], help="mtl.balancer of each multi-task run")
    parser.add_argument("--schemes", nargs="+", default=["hard"],
                        help="model.sharing of further multi-task runs (with the first balancer)")
    parser.add_argument("--run", nargs="+", action="append", default=[], metavar="NAME key=value",
                        help="a further multi-task run: its name, then its overrides (up to the next flag)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="folder of the runs and tables")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="train only these runs and write no table (e.g. to train runs in parallel processes)")
    parser.add_argument("--time-rounds", type=int_flag("--time-rounds", 0), default=5,
                        help="interleaved rounds timing training steps and inference (0: skip)")
    parser.add_argument("--time-batch", type=int_flag("--time-batch", 1), default=8, help="inference batch timed")
    parser.add_argument("overrides", nargs="*", help="overrides for every run, such as train.epochs=6")
    args = parser.parse_intermixed_args()
    extra = {}
    for run in args.run:
        if len(run) < 2 or "=" in run[0]:
            raise ConfigError(f"--run {' '.join(run)}: give a name, then at least one key=value override")
        loose = [item for item in run[1:] if "=" not in item]
        if loose:
            raise ConfigError(f"--run {run[0]}: '{loose[0]}' is not a key=value override; a --run takes its NAME, "
                              "then key=value overrides up to the next flag")
        extra[run[0]] = run[1:]
    cfg = load_config(args.config, args.overrides)  # fails early on a bad override
    variants = plan_variants(cfg.model.tasks, args.balancers, args.schemes, extra)
    check_variants(args.config, args.overrides, variants, args.out)
    logger.info("compare: %d runs into %s: %s", len(variants), args.out, ", ".join(v.name for v in variants))
    if args.only:
        unknown = sorted(set(args.only) - {v.name for v in variants})
        if unknown:
            raise ConfigError(f"--only {' '.join(unknown)}: not a run of this comparison ({', '.join(v.name for v in variants)})")
        for variant in variants:
            if variant.name in args.only:
                run_variant(args.config, args.overrides, variant, args.out)
        return
    outcomes = [run_variant(args.config, args.overrides, variant, args.out) for variant in variants]
    times = (measure_times(args.config, args.overrides, outcomes, args.time_rounds, cfg.data.image_size,
                           args.time_batch) if args.time_rounds else None)
    markdown, table = write_tables(compare_table(outcomes, times), args.out)
    print(markdown.read_text(), end="")
    logger.info("tables: %s, %s", markdown, table)


if __name__ == "__main__":
    run_tool(main)
