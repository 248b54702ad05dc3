"""One dataset over every source of a split: letterboxed Samples and the ground truth evaluation needs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from vision_mtl.data import problems as kinds
from vision_mtl.data.classes import ClassMaps
from vision_mtl.data.readers.coco import coco_dict
from vision_mtl.data.image_io import image_size, read_image_to_fit, read_jpeg_bytes, read_mask
from vision_mtl.data.problems import LoadProblems, ProblemLog
from vision_mtl.data.rasterize import semantic_mask
from vision_mtl.data.records import Record, SourceIndex
from vision_mtl.data.sample import IGNORE_INDEX, PAD_VALUE, Sample
from vision_mtl.data.sources import Split
from vision_mtl.data.transforms import letterbox, letterbox_labels
from vision_mtl.errors import DataError


@dataclass
class DetectionGroundTruth:
    """What COCOeval scores against: a COCO instances dict in original image pixels, and the COCO
    category id of each contiguous class index (to write results with the ids the dict uses)."""

    coco: dict
    category_ids: list[int]


class MultiTaskDataset(Dataset):
    """Every image of a split's sources, in order, as a letterboxed :class:`Sample` with its labels.

    Tasks a source does not label are ``None`` in the Sample (``valid=False`` in the Batch). With an
    ``augment(sample, seed)``, an ``(index, seed)`` key returns the sample augmented. With
    ``decode_to_fit``, large JPEGs are decoded at reduced scale (``read_image_to_fit``: evaluation,
    as inference reads them; training crops zoom in, so it decodes in full). With
    ``defer_jpeg``, a plain JPEG comes back undecoded (its bytes in ``Sample.encoded``, labels already
    letterboxed) for the training device to decode. An image that cannot be decoded becomes a blank
    sample labelled for nothing (reported once), so an epoch never stops and batches keep their size;
    evaluation skips it through :meth:`labelled_for`.
    """

    def __init__(self, split: Split, tasks: list[str], classes: dict[str, list[str]], image_size: int,
                 multi_label: bool = False):
        self.name = split.name
        self.tasks = tasks
        self.classes = classes
        self.image_size = image_size
        self.multi_label = multi_label
        self.sources = split.sources
        self.maps = [ClassMaps.build(source, classes) for source in self.sources]
        self.records: list[Record] = [r for source in self.sources for r in source.records]
        if not self.records:
            raise DataError(f"{split.name} has no images; check its sources' paths")
        self.source_of = np.repeat(np.arange(len(self.sources)), [len(s.records) for s in self.sources])
        self.image_ids = _unique_ids(self.sources)
        self.class_targets = [self._class_target(i, split.problems) for i in range(len(self.records))]
        split.problems.emit(split.name)
        self.index_problems = split.problems
        self.load_problems = LoadProblems(len(self.records), split.name)
        self._ground_truth: DetectionGroundTruth | None = None
        self.augment: Callable[[Sample, int], Sample] | None = None
        self.defer_jpeg = False
        self.decode_to_fit = False

    def __len__(self) -> int:
        return len(self.records)

    def _locate(self, index: int) -> tuple[Record, SourceIndex, ClassMaps]:
        source = int(self.source_of[index])
        return self.records[index], self.sources[source], self.maps[source]

    def _class_target(self, index: int, problems: ProblemLog) -> list[int] | None:
        """Model class ids of an image's image-level labels; None when it has none the model can learn."""
        record, source, maps = self._locate(index)
        if "classification" not in source.tasks or record.classes is None:
            return None
        wanted = [n for n in record.classes if source.class_map.get(n, n) is not None]  # class_map drops some
        known = [maps.classification[n] for n in wanted if n in maps.classification]
        problems.add(record.path, kinds.UNKNOWN_CLASS, len(wanted) - len(known))
        if self.multi_label:  # no label at all is a labelled negative; only unknown labels is unlabelled
            return sorted(set(known)) if known or not wanted else None
        if len(known) > 1:
            problems.add(record.path, kinds.SEVERAL_LABELS)
        return known if len(known) == 1 else None

    # ---- what evaluation needs, without decoding images
    def labelled_for(self, index: int) -> set[str]:
        """The tasks image ``index`` carries labels for (less any found unusable when it was loaded)."""
        record, source, _ = self._locate(index)
        tasks = source.labelled(record)
        if self.class_targets[index] is None:
            tasks.discard("classification")
        flagged = self.load_problems
        if flagged.has(index, kinds.UNREADABLE_IMAGE):
            return set()
        if flagged.has(index, kinds.LABEL_SIZE):
            tasks -= {"detection", "segmentation"} if source.seg_from_instances else {"detection"}
        if flagged.has(index, kinds.MASK_SIZE) or flagged.has(index, kinds.UNREADABLE_MASK):
            tasks.discard("segmentation")
        return tasks

    def detection_ground_truth(self) -> DetectionGroundTruth | None:
        """The split's detection labels for COCOeval (crowd regions kept), or None when it has none."""
        if self._ground_truth is None and "detection" in self.tasks:
            entries = []
            for index, record in enumerate(self.records):
                _, source, maps = self._locate(index)
                if "detection" in source.labelled(record):
                    instances = dataclasses.replace(record.instances, labels=maps.detection[record.instances.labels])
                    entries.append((int(self.image_ids[index]), record.key, record.size, instances))
            if entries:
                ids = self.category_ids()
                self._ground_truth = DetectionGroundTruth(coco_dict(entries, self.classes["detection"], ids), ids)
        return self._ground_truth

    def category_ids(self) -> list[int]:
        """The id results are written with for each detection class: the first detection source's own
        ids (COCO's, YOLO's) when it maps one-to-one onto the classes, else class index + 1."""
        for source, maps in zip(self.sources, self.maps):
            if "detection" in source.tasks:
                one_to_one = sorted(maps.detection.tolist()) == list(range(len(self.classes["detection"])))
                if source.category_ids and one_to_one:
                    ids = dict(zip(maps.detection.tolist(), source.category_ids))
                    return [ids[i] for i in range(len(ids))]
                break
        return list(range(1, len(self.classes["detection"]) + 1))

    def original_mask(self, index: int) -> np.ndarray | None:
        """The segmentation ground truth of image ``index`` at the image's own size (ignore = 255);
        None when it has none (an image that cannot be read has none)."""
        record, source, _ = self._locate(index)
        if "segmentation" not in source.labelled(record):
            return None
        try:
            size = record.size if source.seg_from_instances else image_size(record.path)
        except DataError as exc:
            self.load_problems.report(index, kinds.UNREADABLE_IMAGE, record.path, str(exc.__cause__ or exc))
            return None
        mask = self._mask(index, size)
        return mask if mask is not None else np.full(size, IGNORE_INDEX, np.uint8)

    def index_labels(self, index: int) -> dict[str, list[int]]:
        """Model class ids known without decoding: one per box (detection), per painted object
        (segmentation from instances; a mask file needs decoding), per image label (classification)."""
        record, source, maps = self._locate(index)
        tasks, labels = self.labelled_for(index), {}
        if "detection" in tasks or ("segmentation" in tasks and source.seg_from_instances):
            objects = record.instances
            painted = [i for i, s in enumerate(objects.segments) if s is not None and not objects.crowd[i]]
            if "detection" in tasks:
                det = maps.detection[objects.labels[~objects.crowd]]
                labels["detection"] = det[det >= 0].tolist()
            if "segmentation" in tasks and source.seg_from_instances:
                seg = maps.instance_values[objects.labels[painted]]
                labels["segmentation"] = seg[seg != IGNORE_INDEX].tolist()
        if "classification" in tasks:
            labels["classification"] = list(self.class_targets[index])
        return labels

    def sample_weights(self) -> np.ndarray | None:
        """Per-image training draw weights from the sources' ``weight``; None when all are equal."""
        weights = np.array([s.weight for s in self.sources], np.float64)[self.source_of]
        return None if np.all(weights == weights[0]) else weights

    # ---- loading
    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self._load(index)
        return sample if seed is None or self.augment is None else self.augment(sample, seed)

    def _load(self, index: int) -> Sample:
        record, source, maps = self._locate(index)
        meta = {"path": str(record.path), "key": record.key, "index": index, "image_id": int(self.image_ids[index]),
                "source": source.name}
        try:
            encoded = read_jpeg_bytes(record.path) if self.defer_jpeg else None
            image, size = (None, encoded[1]) if encoded else \
                read_image_to_fit(record.path, self.image_size if self.decode_to_fit else None)
        except DataError as exc:
            self.load_problems.report(index, kinds.UNREADABLE_IMAGE, record.path, str(exc.__cause__ or exc))
            blank = np.full((self.image_size, self.image_size, 3), PAD_VALUE, np.uint8)
            return letterbox(Sample(blank, meta={**meta, "skipped": True}), self.image_size)
        sample = Sample(image, meta=meta)
        tasks = self.labelled_for(index)
        if record.size is not None and record.size != size and tasks & {"detection", "segmentation"}:
            self.load_problems.report(index, kinds.LABEL_SIZE, record.path, f"annotated {record.size}, decoded {size}")
            tasks = self.labelled_for(index)
        if "detection" in tasks:
            keep = ~record.instances.crowd & (maps.detection[record.instances.labels] >= 0)
            sample.boxes = record.instances.boxes[keep].copy()
            sample.labels = maps.detection[record.instances.labels[keep]]
        if "segmentation" in tasks:
            sample.mask = self._mask(index, size)
        if "classification" in tasks:
            sample.label = self._encode(self.class_targets[index])
        if encoded:
            sample = sample.replace(encoded=encoded[0], meta={**meta, "canvas": self.image_size})
            return letterbox_labels(sample, size, self.image_size)
        return letterbox(sample, self.image_size, size)

    def _mask(self, index: int, size: tuple[int, int]) -> np.ndarray | None:
        """The model-class mask of image ``index`` at ``size``; None (reported) when the file is unusable."""
        record, source, maps = self._locate(index)
        if source.seg_from_instances:
            return semantic_mask(record.instances, maps.instance_values[record.instances.labels], size)
        try:
            raw = read_mask(record.mask_file).astype(np.int64)
        except DataError as exc:
            self.load_problems.report(index, kinds.UNREADABLE_MASK, record.mask_file, str(exc.__cause__ or exc))
            return None
        if raw.shape != tuple(size):
            detail = f"mask {raw.shape}, image {tuple(size)}"
            self.load_problems.report(index, kinds.MASK_SIZE, record.mask_file, detail)
            return None
        inside = raw < len(maps.mask_values)
        known = inside.copy()
        known[inside] = maps.mask_known[raw[inside]]
        if not known.all():
            detail = f"mask values {np.unique(raw[~known])[:5].tolist()} set to ignore"
            self.load_problems.report(index, kinds.UNKNOWN_CLASS, record.mask_file, detail)
        mask = np.full(raw.shape, IGNORE_INDEX, np.uint8)
        mask[inside] = maps.mask_values[raw[inside]]
        return mask

    def _encode(self, ids: list[int]) -> int | np.ndarray:
        if self.multi_label:
            hot = np.zeros(len(self.classes["classification"]), dtype=np.float32)
            hot[ids] = 1.0
            return hot
        return ids[0]

    def problem_counts(self) -> dict[str, int]:
        """Problems by kind, found so far: at indexing, and while loading (complete after one pass)."""
        return dict(self.index_problems.counts() + self.load_problems.counts())


def _unique_ids(sources: list[SourceIndex]) -> np.ndarray:
    """Image ids unique over the split: the first source keeps its own (COCO ids match its file);
    a later source whose ids collide is shifted past the largest id so far."""
    ids, largest = [], 0
    for source in sources:
        local = np.array([r.image_id for r in source.records], np.int64)
        if ids and len(local) and np.isin(local, np.concatenate(ids)).any():
            local = local - local.min() + largest + 1
        ids.append(local)
        largest = max(largest, int(local.max(initial=0)))
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)
