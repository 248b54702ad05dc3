"""Convert detection/segmentation labels between COCO and YOLO (ultralytics) layouts.

    python tools/convert_dataset.py --from coco --to yolo --annotations instances.json --images images \
        --out yolo_dir [--split train] [--link]
    python tools/convert_dataset.py --from yolo --to coco --data yolo_dir/data.yaml --split train --out train.json
"""

from __future__ import annotations

import argparse
import logging

from vision_mtl.data.convert import coco_to_yolo, yolo_to_coco
from vision_mtl.errors import ConfigError
from vision_mtl.utils.cli import run_tool

logger = logging.getLogger("convert")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", choices=("coco", "yolo"), required=True)
    parser.add_argument("--to", dest="target", choices=("coco", "yolo"), required=True)
    parser.add_argument("--annotations", help="coco -> yolo: the COCO instances JSON")
    parser.add_argument("--images", help="coco -> yolo: the folder the JSON's file names are relative to")
    parser.add_argument("--data", help="yolo -> coco: the dataset's data.yaml")
    parser.add_argument("--split", default="train", help="the split to write (coco -> yolo) or read (yolo -> coco)")
    parser.add_argument("--out", required=True, help="coco -> yolo: output folder; yolo -> coco: output JSON")
    parser.add_argument("--link", action="store_true", help="coco -> yolo: symlink the images instead of copying")
    args = parser.parse_args()
    if (args.source, args.target) == ("coco", "yolo"):
        if not (args.annotations and args.images):
            raise ConfigError("--from coco needs --annotations and --images")
        counts = coco_to_yolo(args.annotations, args.images, args.out, args.split, args.link)
    elif (args.source, args.target) == ("yolo", "coco"):
        if not args.data:
            raise ConfigError("--from yolo needs --data (the data.yaml)")
        counts = yolo_to_coco(args.data, args.split, args.out)
    else:
        raise ConfigError(f"nothing to convert from {args.source} to {args.target}; "
                          "choose coco -> yolo or yolo -> coco")
    logger.info("wrote %s: %s", args.out, ", ".join(f"{n} {what}" for what, n in counts.items()))


if __name__ == "__main__":
    run_tool(main)
