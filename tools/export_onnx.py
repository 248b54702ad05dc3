"""Export a trained checkpoint to ONNX: one graph with every head, checked against PyTorch.

    python tools/export_onnx.py --weights runs/shapes/best.pt --out model.onnx [--force] [--imgsz 640]
                                [--opset N] [--dynamic] [--half] [--no-nms] [--seg-logits]
                                [--exporter torchscript] [--images DIR] [key=value ...]
                                [--int8 [--calib DIR | --calib-images N]]

Input ``images``: float [B, 3, H, W] RGB in [0, 1], letterboxed to --imgsz (normalisation is in
the graph). The batch is always dynamic; --dynamic frees height and width (multiples of 32).
Outputs: cls_scores [B,C]; det_boxes [B,K,4], det_scores [B,K], det_labels [B,K], det_num [B]
(NMS in the graph, padded to K) or, with --no-nms, det_candidate_boxes [B,N,4] and
det_candidate_scores [B,N,C]; seg_mask [B,H,W] (argmax in the graph) or, with --seg-logits,
seg_logits [B,K,H,W]. Tasks, class names, input size, mean/std and the training config are in the
file's metadata_props. The graph passes onnx.checker and is compared with PyTorch through
onnxruntime on sample images (--images, else generated; batches of 1 and 3): the tool fails if
an output differs beyond tolerance. --out, a .onnx file (missing folders are created), is written
only when both checks pass, and replaces an existing file only with --force (never the checkpoint
itself).

--int8: the float32 graph, checked as above, is quantised with onnxruntime's static quantisation
(QDQ, per-channel 7-bit int8 weights, so it answers the same on every x86 CPU, VNNI or not; only the
Conv/MatMul/Gemm ops, so NMS, top-k and argmax stay float32), calibrated on the first
--calib-images readable images (default 64; an unreadable file is skipped with a warning) of
--calib DIR, else of the config's val split. Quantisation moves scores on purpose, so instead of
failing the tool reports how the int8 graph differs from the float32 one on the check images, and
the change of each val-split metric (tools/evaluate.py on either file; skipped with a warning where
the val split is unreadable).
metadata_props "precision" says int8 (float32, float16 otherwise), "vision_mtl.int8" the weight range.
"""

from __future__ import annotations

import argparse
import logging

from vision_mtl.errors import ConfigError
from vision_mtl.export.onnx import export_checkpoint
from vision_mtl.utils.cli import int_flag, run_tool

logger = logging.getLogger("export_onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("--out", required=True, help="ONNX file to write (a new file, unless --force)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--imgsz", type=int_flag("--imgsz", 32, 32),
                        help="input side (multiple of 32; default: the training size)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic height and width as well as batch")
    parser.add_argument("--half", action="store_true", help="float16 input and weights (postprocessing stays float32)")
    parser.add_argument("--no-nms", dest="nms", action="store_false",
                        help="detection outputs before top-k/NMS (det_candidate_boxes, det_candidate_scores)")
    parser.add_argument("--seg-logits", action="store_true", help="seg_logits [B,K,H,W] instead of seg_mask")
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo",
                        help="torch.onnx exporter: torch.export based (default) or the legacy TorchScript one")
    parser.add_argument("--images", help="folder whose first 3 images the check runs on (default: generated images)")
    parser.add_argument("--int8", action="store_true", help="quantise to int8 (static, QDQ, per-channel 7-bit weights)")
    parser.add_argument("--calib", help="--int8: folder of calibration images (default: the val split)")
    parser.add_argument("--calib-images", type=int_flag("--calib-images", 1), default=64,
                        help="--int8: number of calibration images (default 64)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.detection.score_thresh=0.3")
    args = parser.parse_intermixed_args()
    for chatty in ("onnxscript", "onnx_ir"):  # the exporter's graph optimiser logs every rewrite at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if not args.int8 and (args.calib or args.calib_images != 64):
        raise ConfigError("--calib and --calib-images only apply with --int8; add --int8 or leave them out")
    overrides = [*args.overrides, *([f"data.image_size={args.imgsz}"] if args.imgsz is not None else [])]
    report = export_checkpoint(args.weights, args.out, overrides, opset=args.opset, dynamic=args.dynamic,
                               half=args.half, nms=args.nms, seg_logits=args.seg_logits, exporter=args.exporter,
                               images=args.images, overwrite=args.force, int8=args.int8, calib=args.calib,
                               calib_images=args.calib_images)
    if args.int8:
        logger.info("onnx.checker: ok; float32 graph matches PyTorch\nint8 vs float32 graph on the check images "
                    "(det_matched: float32 detections found again, same class, IoU >= 0.5; seg_agreement: "
                    "mask pixels of the same class; others: largest difference) and on the val split (metric change):")
    else:
        logger.info("onnx.checker: ok\nonnxruntime vs PyTorch, largest difference per output:")
    for name, value in report.items():
        logger.info("  %-22s %.3g", name, value)
    logger.info("written: %s", args.out)


if __name__ == "__main__":
    run_tool(main)
