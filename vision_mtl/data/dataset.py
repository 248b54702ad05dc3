"""A split's images joined with whichever label sources it has: COCO boxes, mask PNGs, CSV labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from vision_mtl.config import DataConfig, SplitConfig
from vision_mtl.data.coco import CocoImage, CocoIndex, load_coco
from vision_mtl.data.image_io import list_images, read_image, read_mask
from vision_mtl.data.label_csv import read_label_csv
from vision_mtl.data.sample import Sample
from vision_mtl.data.transforms import letterbox
from vision_mtl.errors import DataError


@dataclass
class _Record:
    path: Path
    key: str  # path relative to the images folder, posix
    coco: CocoImage | None
    mask_path: Path | None
    label_names: list[str] | None


@dataclass
class DetectionGroundTruth:
    """What COCOeval scores against: a COCO instances dict in original image pixels, and the COCO
    category id of each contiguous class index (to write results with the ids the dict uses)."""

    coco: dict
    category_ids: list[int]


@dataclass
class SplitSources:
    """The label sources of one split, read once and shared by class discovery and the dataset."""

    images_dir: Path
    coco: CocoIndex | None
    masks_dir: Path | None
    labels: dict[str, list[str]] | None


def read_split(data: DataConfig, split: SplitConfig, name: str) -> SplitSources:
    """Resolve a split's paths under ``data.root`` and read its annotation files."""
    root = Path(data.root)
    images_dir = root / split.images
    if not split.images or not images_dir.is_dir():
        raise DataError(f"data.{name}.images folder '{images_dir}' not found; check data.root and data.{name}.images")
    masks_dir = root / split.masks if split.masks else None
    if masks_dir is not None and not masks_dir.is_dir():
        raise DataError(f"data.{name}.masks folder '{masks_dir}' not found; fix the path or set it to null")
    return SplitSources(
        images_dir=images_dir,
        coco=load_coco(root / split.annotations) if split.annotations else None,
        masks_dir=masks_dir,
        labels=read_label_csv(root / split.labels) if split.labels else None,
    )


def discover_classes(sources: SplitSources, data: DataConfig, tasks: list[str]) -> dict[str, list[str]]:
    """Class names per task from the training split's label files (saved in every checkpoint)."""
    classes: dict[str, list[str]] = {}
    if "detection" in tasks:
        if sources.coco is None:
            raise DataError("model.tasks has detection but data.train.annotations is null; give a COCO JSON")
        classes["detection"] = sources.coco.class_names
    if "segmentation" in tasks:
        if data.seg_classes:
            classes["segmentation"] = list(data.seg_classes)
        elif sources.coco is not None:
            classes["segmentation"] = ["background", *sources.coco.class_names]
        else:
            raise DataError("segmentation needs class names: set data.seg_classes (index = mask value)")
    if "classification" in tasks:
        if sources.labels is None:
            raise DataError("model.tasks has classification but data.train.labels is null; give a file,label CSV")
        classes["classification"] = sorted({n for names in sources.labels.values() for n in names})
    return classes


class MultiTaskDataset(Dataset):
    """Every image of a split as a letterboxed :class:`Sample` with the labels its sources give.

    An image missing from a label source is simply unlabelled for that task (``Sample.has``).
    """

    def __init__(self, sources: SplitSources, tasks: list[str], classes: dict[str, list[str]],
                 image_size: int, multi_label: bool = False):
        self.tasks = tasks
        self.classes = classes
        self.image_size = image_size
        self.multi_label = multi_label
        self._coco = sources.coco
        self._cls_index = {n: i for i, n in enumerate(classes.get("classification", []))}
        self.records = [self._record(path, sources) for path in list_images(sources.images_dir)]
        if not self.records:
            raise DataError(f"no images found in '{sources.images_dir}'")

    def _record(self, path: Path, sources: SplitSources) -> _Record:
        key = path.relative_to(sources.images_dir).as_posix()
        coco = None
        if "detection" in self.tasks and sources.coco is not None:
            coco = sources.coco.images.get(key) or sources.coco.images.get(path.name)
        mask_path = None
        if "segmentation" in self.tasks and sources.masks_dir is not None:
            candidate = (sources.masks_dir / key).with_suffix(".png")
            mask_path = candidate if candidate.is_file() else None
        label_names = None
        if "classification" in self.tasks and sources.labels is not None:
            label_names = sources.labels.get(key, sources.labels.get(path.name))
        return _Record(path, key, coco, mask_path, label_names)

    def __len__(self) -> int:
        return len(self.records)

    # ---- what evaluation needs, without decoding images
    def detection_ground_truth(self) -> DetectionGroundTruth | None:
        """The split's detection labels for COCOeval, or None when it has none."""
        if "detection" not in self.tasks or self._coco is None:
            return None
        return DetectionGroundTruth(self._coco.dataset, self._coco.category_ids)

    def labelled_for(self, index: int) -> set[str]:
        """The tasks image ``index`` carries labels for."""
        record = self.records[index]
        tasks = set()
        if record.coco is not None:
            tasks.add("detection")
        if record.mask_path is not None:
            tasks.add("segmentation")
        if record.label_names is not None:
            tasks.add("classification")
        return tasks

    def original_mask(self, index: int) -> np.ndarray | None:
        """The segmentation ground truth of image ``index`` at the file's own size."""
        record = self.records[index]
        return read_mask(record.mask_path) if record.mask_path is not None else None

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        image = read_image(record.path)
        sample = Sample(image=image, meta={"path": str(record.path), "key": record.key, "index": index,
                                           "image_id": record.coco.image_id if record.coco else index})
        if record.coco is not None:
            sample.boxes, sample.labels = record.coco.boxes.copy(), record.coco.labels
        if record.mask_path is not None:
            mask = read_mask(record.mask_path)
            if mask.shape != image.shape[:2]:
                raise DataError(f"mask '{record.mask_path}' is {mask.shape}, image is {image.shape[:2]}")
            sample.mask = mask
        if record.label_names is not None:
            sample.label = self._encode_label(record.label_names)
        return letterbox(sample, self.image_size)

    def _encode_label(self, names: list[str]) -> int | np.ndarray | None:
        known = [self._cls_index[n] for n in names if n in self._cls_index]
        if self.multi_label:
            hot = np.zeros(len(self._cls_index), dtype=np.float32)
            hot[known] = 1.0
            return hot
        return known[0] if len(known) == 1 else None
