"""Speed measurements printed as ratios of candidates timed side by side in one run.

    python tools/benchmark.py model [--imgsz 320] [--batch 8] [--rounds 10] [--config cfg.yaml] [key=value ...]
    python tools/benchmark.py export [--imgsz 128] [--batch 1 8] [--rounds 10] [--weights best.pt] [key=value ...]
    python tools/benchmark.py engine [--config cfg.yaml] [--rounds 10] [key=value ...]
    python tools/benchmark.py onnx --onnx fp32.onnx int8.onnx [--batch 1 8] [--rounds 10]
    python tools/benchmark.py precision --weights best.pt [--batch 1 8] [--rounds 10]
    python tools/benchmark.py augment [--decode] [--imgsz 640] [--batch 16] [--rounds 10] [--config cfg.yaml] [key=value ...]
    python tools/benchmark.py infer --weights best.pt [--onnx fp32.onnx int8.onnx] [--imgsz 320] [--source DIR]
                                    [--images 300] [--batch 16] [--workers 2] [--rounds 3] [--memory]

model: one multi-task forward vs the three single-task models. export: the exported graph in
onnxruntime (CPU) vs PyTorch eager, network and postprocessing (NMS, argmax) included. infer:
folder inference throughput vs its bound max(decode only, model only), side by side for the
checkpoint in float32 and bf16 and each --onnx export (default folder: the shared coco128 photos,
else --images shapes images); --memory adds the peak
resident memory after 100 and after 1,000 images of one run. engine: one Trainer optimiser step vs a
bare hand-written step (same model, batches, optimiser), and the trainer under bf16 (and fp16 on CUDA).
onnx: exported graphs of one model (e.g. float32 and --int8) in onnxruntime (CPU), side by side.
precision: a checkpoint in PyTorch, float32 vs bf16 autocast (forced, whatever the CPU supports).
augment: images/s of the kornia device pipeline vs the albumentations backend, on the CPU, with the
train.augment recipe (preset default unless set), decoding excluded from both. augment --decode: from
the config's training files (e.g. --config configs/coco128.yaml), one epoch per round through the
training loader (data.num_workers workers): JPEGs decoded and augmented on the training device
(data.decode=device, kornia) vs decoded and augmented by albumentations in the workers; CUDA when present.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from vision_mtl.config import load_config
from vision_mtl.benchmarks.augment import benchmark_augment, benchmark_decode
from vision_mtl.benchmarks.engine import benchmark_engine
from vision_mtl.benchmarks.model import (benchmark_export, benchmark_model, benchmark_onnx_files, benchmark_precision,
                                         random_model)
from vision_mtl.engine.runners import OnnxRunner, TorchRunner, load_torch_runner
from vision_mtl.errors import ConfigError
from vision_mtl.benchmarks.infer import benchmark_folder, benchmark_infer, coco128_images, infer_candidates, memory_probe
from vision_mtl.utils.cli import DEFAULT_CONFIG, run_tool
from vision_mtl.utils.runtime import cpu_has_bf16, resolve_device

logger = logging.getLogger("benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["model", "export", "infer", "engine", "onnx", "precision", "augment"],
                        help="model: multi-task vs three single-task models; export: onnxruntime vs torch eager; "
                             "infer: folder inference vs its bound")
    parser.add_argument("--config", help="YAML config whose model section is measured (default: shapes)")
    parser.add_argument("--imgsz", type=int, help="input side (default: model 320, export the config's data.image_size)")
    parser.add_argument("--batch", type=int, nargs="+", help="batch size(s) (default: model 8, export 1 and 8)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--weights", help="export: time this trained checkpoint instead of random weights; "
                                          "infer: the checkpoint or ONNX model to run (required)")
    parser.add_argument("--source", help="infer: image folder (default: the shared coco128 images, else --images shapes images)")
    parser.add_argument("--images", type=int, default=300, help="infer: size of the default folder")
    parser.add_argument("--workers", type=int, default=2, help="infer: decoding processes")
    parser.add_argument("--memory", action="store_true", help="infer: also peak memory after 100 and 1,000 images")
    parser.add_argument("--decode", action="store_true", help="augment: from the training files, JPEG decoding "
                                                              "on the device vs in the workers")
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo", help="export: torch.onnx exporter")
    parser.add_argument("--onnx", nargs="+", type=Path, help="onnx: the exported files to time (ratios to the first); infer: exports of --weights "
                                                      "to run beside it (e.g. float32 and --int8)")
    parser.add_argument("overrides", nargs="*", help="config overrides such as model.backbone=resnet50")
    args = parser.parse_intermixed_args()
    {"model": run_model, "export": run_export, "infer": run_infer, "engine": run_engine,
     "onnx": run_onnx, "precision": run_precision, "augment": run_augment}[args.what](args)


def run_model(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    device = resolve_device(cfg.train.device)
    imgsz, batch = args.imgsz or 320, (args.batch or [8])[0]
    logger.info("model benchmark: backbone %s, %dx%d, batch %d, %d rounds, device %s, %d threads",
                cfg.model.backbone, imgsz, imgsz, batch, args.rounds, device, torch.get_num_threads())
    result = benchmark_model(cfg, imgsz, batch, args.rounds, device)
    for key, value in result.items():
        logger.info("  %-28s %.3f", key, value)


def run_export(args: argparse.Namespace) -> None:
    overrides = [*args.overrides, *([f"data.image_size={args.imgsz}"] if args.imgsz else [])]
    if args.weights:
        runner, _ = load_torch_runner(args.weights, args.config, overrides)
        model, info = runner.model, runner.info
    else:
        model, info = random_model(load_config(args.config, overrides))
    for chatty in ("onnxscript", "onnx_ir"):  # the exporter's graph optimiser logs every rewrite at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    logger.info("export benchmark: %s, %dx%d, %d rounds, CPU, %d threads, %s exporter",
                args.weights or f"{info.config['model']['backbone']} (random weights)", info.image_size,
                info.image_size, args.rounds, torch.get_num_threads(), args.exporter)
    for row in benchmark_export(model, info, args.batch or [1, 8], args.rounds, args.exporter):
        logger.info("  batch %-3d torch ms %9.2f   onnxruntime ms %9.2f   ratio onnxruntime / torch %.3f",
                    row["batch"], row["torch ms"], row["onnxruntime ms"], row["ratio onnxruntime / torch"])


def run_onnx(args: argparse.Namespace) -> None:
    if not args.onnx:
        raise ConfigError("benchmark onnx needs --onnx: exported files of one model, e.g. fp32.onnx int8.onnx")
    runners = [OnnxRunner(path) for path in args.onnx]  # each must be a vision_mtl graph
    size = args.imgsz or runners[0].info.image_size
    logger.info("onnx benchmark: %s, %dx%d, %d rounds, CPU, %d threads",
                ", ".join(f"{p} ({r.precision})" for p, r in zip(args.onnx, runners)), size, size, args.rounds,
                torch.get_num_threads())
    for row in benchmark_onnx_files(args.onnx, size, args.batch or [1, 8], args.rounds):
        logger.info("  %s", "   ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))

def run_precision(args: argparse.Namespace) -> None:
    if not args.weights:
        raise ConfigError("benchmark precision needs --weights: a checkpoint, e.g. runs/shapes/best.pt")
    overrides = [*args.overrides, *([f"data.image_size={args.imgsz}"] if args.imgsz else [])]
    fp32, _ = load_torch_runner(args.weights, args.config, overrides)
    bf16 = TorchRunner(fp32.model, fp32.info, fp32.device, precision="bf16")
    logger.info("precision benchmark: %s, %dx%d, %d rounds, %s, %d threads, native bf16 on this CPU: %s",
                args.weights, fp32.info.image_size, fp32.info.image_size, args.rounds, fp32.device,
                torch.get_num_threads(), cpu_has_bf16())
    for row in benchmark_precision(fp32, bf16, args.batch or [1, 8], args.rounds):
        logger.info("  batch %-3d fp32 ms %9.2f   bf16 ms %9.2f   ratio bf16 / fp32 %.3f",
                    row["batch"], row["fp32 ms"], row["bf16 ms"], row["ratio bf16 / fp32"])


def run_infer(args: argparse.Namespace) -> None:
    if not args.weights:
        raise ConfigError("benchmark infer needs --weights: a checkpoint (e.g. runs/shapes/best.pt) or an ONNX model")
    predictors = infer_candidates(args.weights, args.onnx or [], args.imgsz)
    first = next(iter(predictors.values()))
    batch = (args.batch or [16])[0]
    with tempfile.TemporaryDirectory(prefix="vision_mtl_bench_") as tmp:
        source = Path(args.source) if args.source else coco128_images() or benchmark_folder(Path(tmp) / "folder",
                                                                                             args.images)
        logger.info("infer benchmark: %s, %s, %dx%d, batch %d, %d workers, %d rounds, %d threads, outputs written",
                    ", ".join(predictors), source, first.image_size, first.image_size, batch, args.workers,
                    args.rounds, torch.get_num_threads())
        rows = benchmark_infer(predictors, source, batch, args.workers, args.rounds, Path(tmp) / "runs")
        base = next((name for name in rows if name.startswith("onnx float32")), next(iter(rows)))
        logger.info("  images %d; decode s %.3f", *(next(iter(rows.values()))[k] for k in ("images", "decode s")))
        logger.info("  %-34s %9s %11s %18s %15s %17s %s", "candidate", "model s", "pipeline s", "pipeline images/s",
                    "model images/s", "bound / pipeline", f"pipeline vs {base}")
        for name, row in rows.items():
            logger.info("  %-34s %9.3f %11.3f %18.3f %15.3f %17.3f %.3f", name, row["model s"], row["pipeline s"],
                        row["pipeline images/s"], row["model images/s"], row["bound / pipeline"],
                        row["pipeline images/s"] / rows[base]["pipeline images/s"])
        if args.memory:
            big = benchmark_folder(Path(tmp) / "memory", 1000)
            peaks = memory_probe(Path(args.weights), big, Path(tmp) / "memory-run", batch, args.workers, (100, 1000))
            logger.info("  peak MiB after 100 images %.1f, after 1000 %.1f, ratio %.3f", peaks[100], peaks[1000],
                        peaks[1000] / peaks[100])


def run_augment(args: argparse.Namespace) -> None:
    imgsz, batch = args.imgsz or 640, (args.batch or [16])[0]
    cfg = load_config(args.config, ["train.augment.preset=default", *args.overrides, f"data.image_size={imgsz}",
                                    f"train.batch_size={batch}"])
    if args.decode:
        device = resolve_device(cfg.train.device)
        logger.info("augment benchmark, decoding included: preset %s, training split of %s, %dx%d, batch %d, "
                    "%d workers, %d rounds, device %s, %d threads", cfg.train.augment.preset, cfg.data.root, imgsz,
                    imgsz, batch, cfg.data.num_workers, args.rounds, device, torch.get_num_threads())
        for key, value in benchmark_decode(cfg, args.rounds, device).items():
            logger.info("  %-44s %s", key, value if isinstance(value, int) else f"{value:.3f}")
        return
    logger.info("augment benchmark: preset %s, %dx%d, batch %d, %d rounds, CPU, %d threads, no decoding",
                cfg.train.augment.preset, imgsz, imgsz, batch, args.rounds, torch.get_num_threads())
    for key, value in benchmark_augment(cfg.train.augment, imgsz, batch, args.rounds).items():
        logger.info("  %-30s %.3f", key, value)


def run_engine(args: argparse.Namespace) -> None:
    overrides = [*args.overrides, *([f"data.image_size={args.imgsz}"] if args.imgsz else []),
                 *([f"train.batch_size={args.batch[0]}"] if args.batch else [])]
    cfg = load_config(args.config or DEFAULT_CONFIG, overrides)
    amp_modes = ["bf16", "fp16"] if torch.cuda.is_available() and cfg.train.device != "cpu" else ["bf16"]
    logger.info("engine benchmark: backbone %s, %dx%d, batch %d, %d rounds, %d threads, precisions fp32 %s",
                cfg.model.backbone, cfg.data.image_size, cfg.data.image_size, cfg.train.batch_size, args.rounds,
                torch.get_num_threads(), " ".join(amp_modes))
    for key, value in benchmark_engine(cfg, args.rounds, amp_modes).items():
        logger.info("  %-34s %.3f", key, value)


if __name__ == "__main__":
    run_tool(main)
