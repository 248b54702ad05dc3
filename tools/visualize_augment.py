"""Draw augmented training samples with their boxes and mask outlines, to check ``train.augment`` by eye.

    python tools/visualize_augment.py --config configs/shapes.yaml --out aug.png [--batches 2] [key=value ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from vision_mtl.config import load_config
from vision_mtl.data.augment.preview import augment_preview
from vision_mtl.utils.cli import int_flag, run_tool
from vision_mtl.utils.outputs import check_writable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (defaults: the built-in shapes run)")
    parser.add_argument("--out", default="augment.png", help="PNG to write (default: augment.png)")
    parser.add_argument("--batches", type=int_flag("--batches", 1), default=1, help="training batches to draw")
    parser.add_argument("overrides", nargs="*", help="config overrides such as train.augment.preset=strong")
    args = parser.parse_intermixed_args()
    cfg = load_config(args.config, args.overrides)
    check_writable(Path(args.out).parent)
    Image.fromarray(augment_preview(cfg, args.batches)).save(args.out, format="PNG")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_tool(main)
