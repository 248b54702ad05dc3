"""Check a dataset without training: per split, the images, the labels per task and class, and
every problem found (bad files are data, not errors: the exit code is 0; a missing path is 2).

    python tools/check_dataset.py --config configs/coco128.yaml [--decode] [--split val|test] [key=value ...]
"""

from __future__ import annotations

import argparse

from vision_mtl.config import load_config
from vision_mtl.data.classes import discover_classes
from vision_mtl.data.dataset import MultiTaskDataset
from vision_mtl.data.loader import prepare_synthetic
from vision_mtl.data.report import format_report, split_report
from vision_mtl.data.sources import read_split
from vision_mtl.utils.cli import run_tool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (defaults: the built-in shapes run)")
    parser.add_argument("--decode", action="store_true", help="decode every image too (finds truncated files)")
    parser.add_argument("--split", choices=("train", "val", "test", "all"), default="all",
                        help="which split to check (all: train, val and data.test when the config has one)")
    parser.add_argument("overrides", nargs="*", help="config overrides such as data.root=...")
    args = parser.parse_intermixed_args()
    cfg = load_config(args.config, args.overrides)
    prepare_synthetic(cfg)
    splits = {"train": read_split(cfg, "train")}
    classes = discover_classes(splits["train"].sources, cfg.model.tasks)
    names = ("train", "val", *(("test",) if cfg.data.test else ())) if args.split == "all" else (args.split,)
    for name in names:
        split = splits.get(name) or read_split(cfg, name)
        dataset = MultiTaskDataset(split, cfg.model.tasks, classes, cfg.data.image_size,
                                   cfg.model.classification.multi_label)
        print(format_report(split_report(dataset, args.decode, cfg.data.num_workers)), flush=True)
        print()


if __name__ == "__main__":
    run_tool(main)
