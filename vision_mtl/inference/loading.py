"""Pipelined reading: DataLoader workers decode and letterbox image files in the background, and
hand over whole batches; a file that cannot be read travels as a failure, never as an exception."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vision_mtl.data.image_io import read_image
from vision_mtl.data.sample import Batch, Sample
from vision_mtl.engine.preprocess import collate_prepared, prepare_image, read_prepared
from vision_mtl.errors import DataError
from vision_mtl.inference.sources import ImageFile


@dataclass
class LoadedBatch:
    """The readable images of a batch (``batch``, None when none was), their untouched originals
    when overlays are drawn, and the files that failed with the reason."""

    batch: Batch | None
    originals: list[np.ndarray] | None
    failures: list[tuple[ImageFile, str]]

    def pin_memory(self) -> LoadedBatch:
        """Called by the DataLoader's pinning thread: page-locked images copy to the GPU asynchronously."""
        if self.batch is not None:
            self.batch = Batch(self.batch.images.pin_memory(), self.batch.targets, self.batch.meta)
        return self


class ImageFiles(Dataset):
    """Each file read (EXIF applied, converted to RGB) and letterboxed to ``size``."""

    def __init__(self, files: list[ImageFile], size: int, keep_originals: bool = False):
        self.files = files
        self.size = size
        self.keep_originals = keep_originals

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> LoadedFile:
        file = self.files[index]
        meta = {"path": str(file.path), "file": file.relative}
        try:
            if not self.keep_originals:
                return LoadedFile(file, read_prepared(file.path, self.size, meta))
            image = read_image(file.path)  # overlays are drawn on the full image
        except DataError as exc:
            return LoadedFile(file, error=str(exc))
        return LoadedFile(file, prepare_image(image, self.size, meta), original=image)


@dataclass
class LoadedFile:
    """One file as a worker hands it over: prepared, or the reason it could not be read."""

    file: ImageFile
    sample: Sample | None = None
    error: str | None = None
    original: np.ndarray | None = None


def collate_files(items: list[LoadedFile]) -> LoadedBatch:
    good = [item for item in items if item.sample is not None]
    batch = collate_prepared([item.sample for item in good]) if good else None
    originals = [item.original for item in good] if good and good[0].original is not None else None
    return LoadedBatch(batch, originals, [(item.file, item.error) for item in items if item.sample is None])


def file_loader(files: list[ImageFile], size: int, batch_size: int, workers: int,
                keep_originals: bool = False) -> DataLoader:
    """Batches of :class:`LoadedBatch` in file order; ``workers`` background processes decode
    (0: in this process). Pinned memory when CUDA is there, for asynchronous copies."""
    return DataLoader(ImageFiles(files, size, keep_originals), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate_files, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=2 if workers > 0 else None)
