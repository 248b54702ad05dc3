"""How close folder inference comes to its bound, and whether its memory stays flat.

The pipeline overlaps decoding (DataLoader workers) with the model (main thread) and writing
(a thread), so it can be no faster than the slower of decoding alone and the model alone. The
three are timed side by side, interleaved, on the same files; the memory probe runs the pipeline
in a fresh process and reads its peak resident memory (workers included) after the first 100
images and after the last.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from itertools import count
from pathlib import Path

from vision_mtl.data.image_io import list_images
from vision_mtl.data.shapes import ensure_shapes
from vision_mtl.utils.timing import interleaved_timings
from vision_mtl.inference.predictor import Predictor
from vision_mtl.inference.loading import file_loader
from vision_mtl.inference.pipeline import infer_folder
from vision_mtl.inference.sources import list_source
from vision_mtl.utils.distributed import Processes


def benchmark_infer(predictors: dict[str, Predictor], source: Path, batch_size: int, workers: int, rounds: int,
                    scratch: Path) -> dict[str, dict[str, float]]:
    """For each named predictor (all at one input size), side by side in interleaved rounds on the
    same files: seconds for the model alone (on pre-decoded batches, postprocessing to original size
    included) and the whole pipeline (files written), decoding alone (shared by all), as medians;
    images/s of each; and the median per-round ratio bound / pipeline, bound = max(decode, model)."""
    files = list_source(source)
    size = next(iter(predictors.values())).image_size
    batches = [loaded.batch for loaded in file_loader(files, size, batch_size, 0) if loaded.batch is not None]
    runs = count()

    def decode() -> None:
        for _ in file_loader(files, size, batch_size, workers):
            pass

    def model(predictor: Predictor) -> Callable[[], None]:
        def run() -> None:
            for batch in batches:
                predictor.predict_batch(batch)
        return run

    def pipeline(predictor: Predictor) -> Callable[[], None]:
        return lambda: infer_folder(predictor, source, scratch / f"run{next(runs)}", batch_size=batch_size,
                                    workers=workers, show_progress=False, processes=Processes())

    candidates: dict[str, Callable[[], object]] = {"decode": decode}
    for name, predictor in predictors.items():
        predictor.predict_batch(batches[0])  # warm-up: one batch, not a whole round per model
        candidates.update({f"{name} model": model(predictor), f"{name} pipeline": pipeline(predictor)})
    times = interleaved_timings(candidates, rounds, warmup=0)
    rows: dict[str, dict[str, float]] = {}
    for name in predictors:
        row: dict[str, float] = {"images": len(files)}
        parts = {"decode": times["decode"], "model": times[f"{name} model"], "pipeline": times[f"{name} pipeline"]}
        for part, seconds in parts.items():
            row[f"{part} s"] = statistics.median(seconds)
            row[f"{part} images/s"] = len(files) / statistics.median(seconds)
        row["bound / pipeline"] = statistics.median(
            max(d, m) / p for d, m, p in zip(parts["decode"], parts["model"], parts["pipeline"]))
        rows[name] = row
    return rows


def infer_candidates(weights: str, onnx: list[Path], imgsz: int | None) -> dict[str, Predictor]:
    """A checkpoint in float32 and bf16 (fp32 where this CPU has no native bf16), or one ONNX
    model; then each further ONNX export, named by backend and precision."""
    if Path(weights).suffix.lower() == ".onnx":
        predictors = {}
    else:
        bf16 = Predictor(weights, image_size=imgsz, precision="bf16")
        predictors = {"torch float32": Predictor(weights, image_size=imgsz),
                      "torch bf16" if bf16.runner.precision == "bf16" else "torch bf16 (fp32: no native bf16)": bf16}
    for path in [Path(weights)] * (not predictors) + onnx:
        predictor = Predictor(path, image_size=imgsz)
        predictors[f"onnx {predictor.runner.precision} ({path.name})"] = predictor
    return predictors


def memory_probe(weights: Path, source: Path, out: Path, batch_size: int, workers: int,
                 marks: tuple[int, ...]) -> dict[str, float]:
    """Peak resident MiB (main process + decoding workers) after ``marks`` images, from a run of
    ``tools/infer.py``'s pipeline in a fresh process (this one's own peak would hide it)."""
    args = json.dumps({"weights": str(weights), "source": str(source), "out": str(out), "batch_size": batch_size,
                       "workers": workers, "marks": list(marks)})
    code = "import sys; from vision_mtl.benchmarks.infer import _probe; _probe(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def _probe(args_json: str) -> None:
    args = json.loads(args_json)
    marks, peaks = sorted(args["marks"]), {}

    def on_batch(done: int) -> None:
        for mark in marks:
            if mark not in peaks and done >= mark:
                peaks[mark] = peak_rss_mib()

    predictor = Predictor(args["weights"])
    infer_folder(predictor, args["source"], args["out"], batch_size=args["batch_size"], workers=args["workers"],
                 show_progress=False, processes=Processes(), on_batch=on_batch)
    print(json.dumps(peaks))


def peak_rss_mib() -> float:
    """Peak resident memory of this process plus that of its live child processes (Linux /proc)."""
    pids = [str(os.getpid())]
    for task in Path("/proc/self/task").iterdir():
        pids += (task / "children").read_text().split()
    return sum(_status_kib(pid, "VmHWM") for pid in pids) / 1024


def _status_kib(pid: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:  # the process ended meanwhile
        pass
    return 0


def coco128_images() -> Path | None:
    """The shared coco128 photos (``<workspace>/shared/datasets/coco128/images``), where present."""
    coco = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "coco128" / "images"
    return coco if coco.is_dir() and list_images(coco) else None


def benchmark_folder(root: Path, images: int) -> Path:
    """``images`` images to run on: coco128's real photos repeated when the shared dataset is
    there, else synthetic shapes images; written under ``root``."""
    coco = coco128_images()
    originals = list_images(coco) if coco else []
    if not originals:
        shapes = ensure_shapes(root / "shapes", num_train=min(images, 200), num_val=1, image_size=320)
        originals = list_images(shapes / "train" / "images")
    folder = root / "images"
    for i in range(images):
        copy = folder / f"copy{i // len(originals)}" / originals[i % len(originals)].name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(originals[i % len(originals)], copy)
    return folder
