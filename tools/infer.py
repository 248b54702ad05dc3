"""Run a trained model (checkpoint or ONNX) over a folder of images and write the answers as files.

    python tools/infer.py --weights runs/shapes/best.pt --source DIR|GLOB|LIST.txt|IMAGE --out DIR
                          [--batch 16] [--imgsz 640] [--tasks cls,det,seg] [--conf 0.25] [--overlays]
                          [--workers 2] [--resume] [--precision fp32|bf16|auto] [key=value ...]
    torchrun --nproc_per_node 4 tools/infer.py ...      # shards the images over 4 processes

Outputs in --out (the layout of the source is kept under masks/ and overlays/):
  detections.json      COCO results: image_id, file_name, original category_id, bbox xywh, score
  images.json          the COCO images/categories those ids refer to (COCO("images.json").loadRes(...))
  classification.csv   file, top-5 labels and scores (multi-label: predicted classes and every score)
  masks/<rel>.png      class-index PNG at the image's original size (after EXIF rotation)
  overlays/<rel>.jpg   with --overlays: boxes, labels and the mask blended over the image
  errors.log           file<TAB>reason for every image that could not be read
  summary.json         counts, images/s, settings
--out must be new or empty; an interrupted run continues with --resume (same settings), and its
final files equal those of an uninterrupted run. A folder or glob --source leaves out the folders
tools/infer.py wrote (with a note), so an --out inside --source is never read as input.
"""

from __future__ import annotations

import argparse
import logging

import torch

from vision_mtl.inference.predictor import Predictor
from vision_mtl.inference.pipeline import infer_folder
from vision_mtl.utils.cli import add_precision_flag, int_flag, run_tool
from vision_mtl.utils.distributed import Processes

logger = logging.getLogger("infer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint from tools/train.py or .onnx from tools/export_onnx.py")
    parser.add_argument("--source", required=True, help="folder (recursive), glob, .txt list of paths, or one image")
    parser.add_argument("--out", required=True, help="output folder: new or empty, or an earlier run with --resume")
    parser.add_argument("--batch", type=int_flag("--batch", 1), default=16, help="images per model call")
    parser.add_argument("--imgsz", type=int_flag("--imgsz", 32, 32),
                        help="letterbox side, a multiple of 32 (default: the training size)")
    parser.add_argument("--tasks", help="comma-separated subset of the model's tasks: cls, det, seg (default: all)")
    parser.add_argument("--conf", type=float, default=0.25, help="lowest detection score written")
    parser.add_argument("--overlays", action="store_true", help="also write overlay pictures")
    parser.add_argument("--workers", type=int_flag("--workers", 0), default=2,
                        help="background decoding processes (0: none)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--device", help="auto, cpu or cuda[:N] (default: the model's config; one GPU per torchrun process)")
    add_precision_flag(parser)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.detection.nms_thresh=0.5")
    args = parser.parse_intermixed_args()
    processes = Processes.from_env()
    device = args.device
    if device is None and processes.world > 1 and torch.cuda.is_available():
        device = f"cuda:{processes.local_rank}"
    predictor = Predictor(args.weights, tasks=args.tasks, conf=args.conf, image_size=args.imgsz, device=device,
                          precision=args.precision, overrides=args.overrides)
    summary = infer_folder(predictor, args.source, args.out, batch_size=args.batch, workers=args.workers,
                           overlays=args.overlays, resume=args.resume, processes=processes)
    if summary is not None:
        logger.info("%d images: %d written, %d unreadable (errors.log), %d done before; %.1f images/s; outputs in %s",
                    summary["images"], summary["succeeded"], summary["failed"], summary["done_before"],
                    summary["images_per_second"], args.out)


if __name__ == "__main__":
    run_tool(main)
