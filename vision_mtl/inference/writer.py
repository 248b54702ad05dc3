"""Writing results in a background thread, so encoding PNGs and overlays overlaps the model.

Per image: the mask PNG and the overlay (each written atomically), then its progress record.
The queue is bounded: when writing falls behind, the model waits instead of memory growing.
"""

from __future__ import annotations

import io
import logging
import queue
import threading

import numpy as np
from PIL import Image

from vision_mtl.engine.results import ImageResult
from vision_mtl.inference.folder import OutputFolder
from vision_mtl.inference.loading import LoadedBatch
from vision_mtl.inference.records import Record, RecordLog
from vision_mtl.utils.atomic import write_atomic
from vision_mtl.engine.overlay import draw_overlay

logger = logging.getLogger(__name__)

BOX_DECIMALS, SCORE_DECIMALS = 2, 5  # 0.01 px and 1e-5: beyond what any metric or user can see
PNG_LEVEL = 1


class ResultWriter:
    """Takes (loaded batch, results) pairs with :meth:`put`; :meth:`close` drains the queue, stops
    the thread and re-raises any error it met."""

    def __init__(self, folder: OutputFolder, log: RecordLog, multi_label: bool = False, overlays: bool = False,
                 max_pending: int = 4):
        self.folder = folder
        self.log = log
        self.multi_label = multi_label
        self.overlays = overlays
        self.written = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="result-writer", daemon=True)
        self._thread.start()

    def put(self, loaded: LoadedBatch, results: list[ImageResult]) -> None:
        self._raise_if_failed()
        self._queue.put((loaded, results))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.log.close()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so put() never blocks; close() reports the error
            try:
                self._write(*item)
            except BaseException as exc:  # handed to the main thread by put()/close()
                self._error = exc

    def _write(self, loaded: LoadedBatch, results: list[ImageResult]) -> None:
        for file, reason in loaded.failures:
            logger.warning("skipped: %s", reason)  # the reason names the file
            self.log.write({"file": file.relative, "error": reason})
            self.failed += 1
        originals = loaded.originals or [None] * len(results)
        for result, original in zip(results, originals):
            relative = result.meta["file"]
            if result.mask is not None:
                write_atomic(self.folder.mask_path(relative), encode_png(result.mask))
            if original is not None:
                picture = draw_overlay(original, result, self.multi_label)
                write_atomic(self.folder.overlay_path(relative), encode_jpeg(picture))
            self.log.write(to_record(result))
            self.written += 1
        self.log.flush()


def to_record(result: ImageResult) -> Record:
    """What the merged outputs need of one image, rounded for a stable, compact text form."""
    height, width = result.meta["orig_size"]
    record: Record = {"file": result.meta["file"], "height": int(height), "width": int(width)}
    if result.class_scores is not None:
        record["class_scores"] = np.round(result.class_scores.astype(np.float64), SCORE_DECIMALS).tolist()
    if result.boxes is not None:
        boxes = np.round(result.boxes.astype(np.float64), BOX_DECIMALS)
        scores = np.round(result.scores.astype(np.float64), SCORE_DECIMALS)
        record["detections"] = [[*box, score, int(label)] for box, score, label
                                in zip(boxes.tolist(), scores.tolist(), result.labels.tolist())]
    return record


def encode_png(mask: np.ndarray) -> bytes:
    """A class-index PNG: 8-bit up to 255 classes, else 16-bit. zlib level 1: masks are long runs
    of a few values, so it writes ~2x faster than PIL's default level 6, same pixels, larger files."""
    if mask.dtype != np.uint8:
        mask = mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
