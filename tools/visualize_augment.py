"""Draw augmented training samples with their boxes and mask outlines, to check ``train.augment`` by eye.

    python tools/visualize_augment.py --config configs/shapes.yaml --out aug.png [--force] [--batches 2] [key=value ...]

--out is a .png file (missing folders are created); an existing one is replaced only with --force.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from vision_mtl.config import load_config
from vision_mtl.data.augment.preview import augment_preview
from vision_mtl.utils.atomic import atomic_path
from vision_mtl.utils.cli import int_flag, run_tool
from vision_mtl.utils.outputs import check_out_file, writing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (defaults: the built-in shapes run)")
    parser.add_argument("--out", default="augment.png",
                        help="PNG file to write (default: augment.png; a new file, unless --force)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--batches", type=int_flag("--batches", 1), default=1, help="training batches to draw")
    parser.add_argument("overrides", nargs="*", help="config overrides such as train.augment.preset=strong")
    args = parser.parse_intermixed_args()
    cfg = load_config(args.config, args.overrides)
    check_out_file(args.out, ".png", args.force)
    grid = augment_preview(cfg, args.batches)
    with writing(Path(args.out).parent), atomic_path(args.out) as staged:
        Image.fromarray(grid).save(staged, format="PNG")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_tool(main)
