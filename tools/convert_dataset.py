"""Convert detection/segmentation labels between COCO, YOLO (ultralytics) and Pascal VOC layouts.

    python tools/convert_dataset.py --from coco --to yolo --annotations instances.json --images images \
        --out yolo_dir [--split train] [--link]
    python tools/convert_dataset.py --from yolo --to coco --data yolo_dir/data.yaml --split train --out train.json
    python tools/convert_dataset.py --from voc --to coco --images VOC2012/JPEGImages --annotations VOC2012/Annotations \
        [--split-file VOC2012/ImageSets/Main/train.txt] --out train.json
    python tools/convert_dataset.py --from coco --to voc --annotations instances.json --images images --out voc_dir \
        --split train
"""

from __future__ import annotations

import argparse
import logging

from vision_mtl.data.convert import Labels, read_coco, read_voc_folder, read_yolo, write_coco, write_voc, write_yolo
from vision_mtl.errors import ConfigError
from vision_mtl.utils.cli import run_tool

logger = logging.getLogger("convert")

FORMATS = ("coco", "yolo", "voc")


def read(args: argparse.Namespace) -> Labels:
    if args.source == "yolo":
        if not args.data:
            raise ConfigError("--from yolo needs --data (the data.yaml)")
        return read_yolo(args.data, args.split)
    if not (args.annotations and args.images):
        raise ConfigError(f"--from {args.source} needs --annotations and --images")
    if args.source == "coco":
        return read_coco(args.annotations, args.images)
    return read_voc_folder(args.images, args.annotations, args.split_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", choices=FORMATS, required=True)
    parser.add_argument("--to", dest="target", choices=FORMATS, required=True)
    parser.add_argument("--annotations", help="from coco: the instances JSON; from voc: the folder of XML files")
    parser.add_argument("--images", help="from coco or voc: the folder the images are in")
    parser.add_argument("--split-file", help="from voc: only the image ids listed (ImageSets/Main/<split>.txt)")
    parser.add_argument("--data", help="from yolo: the dataset's data.yaml")
    parser.add_argument("--split", default="train", help="the split to read (from yolo) and to write (to yolo or voc)")
    parser.add_argument("--out", required=True, help="to coco: the output JSON; to yolo or voc: the output folder")
    parser.add_argument("--link", action="store_true", help="to yolo or voc: symlink the images instead of copying")
    args = parser.parse_args()
    if args.source == args.target:
        raise ConfigError(f"--from and --to are both {args.source}; nothing to convert")
    if args.split_file and args.source != "voc":
        raise ConfigError("--split-file selects VOC images; it needs --from voc")
    labels = read(args)
    if args.target == "coco":
        counts = write_coco(labels, args.out)
    elif args.target == "yolo":
        counts = write_yolo(labels, args.out, args.split, args.link)
    else:
        counts = write_voc(labels, args.out, args.split, args.link)
    logger.info("wrote %s: %s", args.out, ", ".join(f"{n} {what}" for what, n in counts.items()))


if __name__ == "__main__":
    run_tool(main)
