"""Folder inference: every image of a source through a :class:`~vision_mtl.inference.predictor.Predictor`
into files, pipelined (decoding in DataLoader workers, the model on whole batches, writing in a
background thread), resumable, and sharded over ``torchrun`` processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vision_mtl.errors import check_int
from vision_mtl.inference.predictor import Predictor
from vision_mtl.inference.folder import InferSettings, OutputFolder
from vision_mtl.inference.loading import file_loader
from vision_mtl.inference.merge import OutputSpec, merge_outputs
from vision_mtl.inference.records import RecordLog, finished
from vision_mtl.inference.sources import list_source
from vision_mtl.inference.writer import ResultWriter
from vision_mtl.utils.distributed import Processes
from vision_mtl.utils.metrics_log import write_json
from vision_mtl.utils.outputs import check_writable, writing
from vision_mtl.utils.progress import progress


def infer_folder(predictor: Predictor, source: str | Path, out: str | Path, *, batch_size: int = 16,
                 workers: int = 2, overlays: bool = False, resume: bool = False, show_progress: bool = True,
                 processes: Processes | None = None,
                 on_batch: Callable[[int], None] | None = None) -> dict[str, Any] | None:
    """Run ``predictor`` over every image of ``source`` and write the outputs into ``out`` (see
    :mod:`vision_mtl.inference.merge` for the files). Each process takes every ``world``-th image;
    the main process merges all records at the end and returns the summary (others return None).
    ``on_batch(n)`` is called after each batch with the number of images this process has handed on.
    Every setting is checked before ``out`` is touched, so a refused start leaves it as it was."""
    processes = processes or Processes.from_env()
    check_int("batch_size", batch_size, 1)
    check_int("workers", workers, 0)
    files = list_source(source)
    folder = OutputFolder(out)
    settings = InferSettings(weights=os.path.abspath(predictor.weights),
                             source=os.path.abspath(str(source)), tasks=predictor.tasks,
                             image_size=predictor.image_size, conf=predictor.conf, overlays=overlays)
    if processes.main:
        check_writable(out)
        with writing(out):
            folder.claim(settings, resume)
    processes.barrier()
    if not processes.main:
        folder.check(settings)

    mine = files[processes.rank::processes.world]
    done = finished(folder.records)
    todo = [f for f in mine if f.relative not in done]
    log = RecordLog(folder.records / f"part-{processes.rank}-of-{processes.world}.jsonl")
    writer = ResultWriter(folder, log, predictor.multi_label, overlays)
    bar = progress(None, total=len(todo), unit="img", desc="infer", disable=not (show_progress and processes.main))
    started, handed = time.perf_counter(), 0
    try:
        for loaded in file_loader(todo, predictor.image_size, batch_size, workers, keep_originals=overlays):
            results = predictor.predict_batch(loaded.batch) if loaded.batch is not None else []
            writer.put(loaded, results)
            handed += len(results) + len(loaded.failures)
            bar.update(len(results) + len(loaded.failures))
            if on_batch is not None:
                on_batch(handed)
    finally:
        writer.close()  # also on Ctrl-C: what was computed is written and recorded, so --resume goes on from there
        bar.close()
    seconds = processes.max(time.perf_counter() - started)
    written, failed, skipped = processes.sum([writer.written, writer.failed, len(mine) - len(todo)])
    processes.barrier()
    if not processes.main:
        return None
    counts = merge_outputs(folder, files, OutputSpec(predictor.tasks, predictor.classes, predictor.category_ids,
                                                     predictor.multi_label))
    summary = {**counts, "done_before": int(skipped), "processed_now": int(written + failed),
               "seconds": round(seconds, 3), "images_per_second": round((written + failed) / seconds, 2) if seconds else 0.0,
               "processes": processes.world, "settings": settings.__dict__}
    write_json(folder.root / "summary.json", summary)
    return summary
