"""Typed configuration: one dataclass schema, YAML files and ``key=value`` overrides.

The schema's defaults are the default run (``configs/shapes.yaml`` spells them out), except that
only that file sets ``data.synthetic: shapes``: a config that does not ask for generated data never
gets any written under its ``data.root``.

Every value is checked against the schema when it is read, so a typo or a wrong type stops the
run before any work starts, with a one-line message that names the key and what it accepts.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vision_mtl.errors import ConfigError, first_line

TASKS: tuple[str, ...] = ("classification", "detection", "segmentation")
Task = Literal["classification", "detection", "segmentation"]
PARTS: tuple[str, ...] = ("backbone", "neck", "heads")
Part = Literal["backbone", "neck", "heads"]
Sharing = Literal["hard", "neck", "branch"]


@dataclass
class ClassificationConfig:
    """Image-level head: pooled pyramid features -> linear classifier."""

    multi_label: bool = False
    label_smoothing: float = 0.1
    dropout: float = 0.0
    levels: list[int] = field(default_factory=lambda: [3, 4, 5])


@dataclass
class DetectionConfig:
    """FCOS-style anchor-free head on P3-P7."""

    num_convs: int = 2
    levels: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7])
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    center_sampling_radius: float = 1.5
    score_thresh: float = 0.05
    nms_thresh: float = 0.6
    pre_nms_topk: int = 1000
    max_detections: int = 100


@dataclass
class SegmentationConfig:
    """Semantic-FPN head fusing ``levels`` at the finest one: P3-P5 at 1/8 by default (adding P2, at 1/4,
    makes the multi-task forward about 10 % slower; docs/benchmarks.md)."""

    channels: int = 64
    levels: list[int] = field(default_factory=lambda: [3, 4, 5])
    dice_weight: float = 1.0
    ignore_index: int = 255


@dataclass
class ModelConfig:
    """Which tasks exist and how the shared trunk and the heads are built.

    Pretrained weights (``models/pretrained.py``): ``pretrained: true`` loads timm's ImageNet weights for
    ``backbone`` through the Hugging Face hub cache; ``backbone_weights`` is a local file instead, in timm's
    names or another library's (torchvision, efficientnet_pytorch, a training checkpoint's ``state_dict``),
    mapped to timm's names with a load report, or ``pkg:efficientnet_lite0`` for the file the ``lite0`` extra
    installs (efficientnet_pytorch names; use with ``backbone: tf_efficientnet_lite0``). Not both at once.

    Transfer (``training/transfer.py``): ``init_from`` is a ``.pt`` from tools/train.py whose weights
    initialise the ``init_parts``; a head is taken only when the checkpoint has its task with the
    same class names, else it is new. ``freeze`` stops training those parts (their norms stay in
    eval mode); a head not loaded from ``init_from`` is never frozen.

    Sharing (``models/multitask.py``): ``sharing`` hard = one backbone and neck for all heads; neck =
    one backbone, a neck per task; branch = backbone stages 1..``branch_stage`` shared, later stages
    and the neck per task. Stages are numbered as in detectron2 (1 = the stride-2 stem, k = the
    stage giving C<k>, stride 2^k). ``freeze_stages``: backbone stages 1..k do not train (norms in
    eval mode) until the start of epoch ``unfreeze_epoch`` (counted from 1; null = never).
    """

    tasks: list[Task] = field(default_factory=lambda: list(TASKS))
    backbone: str = "resnet10t"
    pretrained: bool = False
    backbone_weights: str | None = None
    neck_channels: int = 64
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    init_from: str | None = None
    init_parts: list[Part] = field(default_factory=lambda: list(PARTS))
    freeze: list[Part] = field(default_factory=list)
    sharing: Sharing = "hard"
    branch_stage: int = 3
    freeze_stages: int = 0
    unfreeze_epoch: int | None = None


SourceFormat = Literal["files", "coco", "yolo", "voc", "imagefolder", "csv", "masks"]


@dataclass
class SourceConfig:
    """One labelled source of a split; paths are relative to ``data.root`` unless absolute.

    What each format reads (data/README.md shows each layout): files: the ``images`` folder joined
    per image with an optional COCO ``annotations`` file (boxes), ``masks`` folder and ``labels``
    CSV; coco: ``images`` + ``annotations`` (boxes, polygons/RLE, classes present), or image-level
    classes from a ``labels`` CSV / ``label_field``; yolo: ``annotations`` = its data.yaml, ``split``
    = the data.yaml key (default: the split being built); imagefolder: ``images`` with one
    sub-folder per class; csv: ``images`` + ``labels``; masks: ``images`` + ``masks``; voc: ``images`` +
    ``annotations`` (a folder of Pascal VOC XML files; ``difficult`` objects are ignored in evaluation;
    without it, no detection) and optional ``masks`` (e.g. ``SegmentationClass``).
    Any format: ``split_file`` is a text file of image ids (file names without extension, first word of
    each line, ``#`` comments; e.g. ``ImageSets/Main/train.txt``): only those images are read.
    ``fraction`` [start, end] keeps that share of the source's images after a shuffle seeded by
    ``fraction_seed``: [0, 0.8] and [0.8, 1] of one source are complementary (a train/val split).
    Image-level classes, besides a ``labels`` CSV: ``label_list`` is a whitespace list file
    (``image-id class-id ...``, ``#`` comments, as Oxford Pets' list.txt) with ``label_ids`` the
    ``{class-id: name}`` map; ``label_pattern`` is a regular expression whose first group, matched on the
    file name without extension, is the class name (``^(.+)_\\d+$`` for ``Bengal_12.jpg``).
    ``tasks``: what this source labels (null: all it can). ``weight``: how often each of its images
    is drawn in training, relative to an image of a weight-1 source. ``classes``: class names by
    mask value, or the class order. ``class_map``: ``name: name`` renames or merges classes (null
    drops one); integer keys map mask values to class names (unmapped values become ignore).
    ``file_column``, ``label_column``: the ``labels`` CSV's column names when they are not one of
    the common ones (data/readers/label_csv.py lists those).
    """

    format: SourceFormat = "files"
    images: str | None = None
    annotations: str | None = None
    masks: str | None = None
    labels: str | None = None
    label_field: str | None = None
    split: str | None = None
    tasks: list[Task] | None = None
    weight: float = 1.0
    classes: list[str] | None = None
    class_map: dict[int | str, str | None] | None = None
    file_column: str | None = None
    label_column: str | None = None
    split_file: str | None = None
    fraction: list[float] | None = None
    fraction_seed: int = 0
    label_list: str | None = None
    label_ids: dict[int, str] | None = None
    label_pattern: str | None = None


# The keys naming files, fields and columns that each source format reads: (required, optional).
_CSV_COLUMNS = ("file_column", "label_column")
SOURCE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "files": (("images",), ("annotations", "masks", "labels", *_CSV_COLUMNS)),
    "coco": (("images", "annotations"), ("labels", "label_field", *_CSV_COLUMNS)),
    "yolo": (("annotations",), ("split",)),
    "voc": (("images",), ("annotations", "masks")),
    "imagefolder": (("images",), ()),
    "csv": (("images", "labels"), _CSV_COLUMNS),
    "masks": (("images", "masks"), ()),
}


def _shapes_split(split: str) -> list[SourceConfig]:
    return [SourceConfig("files", f"{split}/images", f"{split}/annotations.json", f"{split}/masks",
                         f"{split}/labels.csv")]


@dataclass
class DataConfig:
    """Where the data lives, the sources of each split, and how images are sized for the network.

    ``decode``: where training JPEGs are decoded: ``cpu`` (the DataLoader workers), ``device`` (the
    workers hand over the bytes; the batch is decoded and letterboxed on the training device, nvJPEG on
    CUDA; ``data/augment/decode.py``), ``auto`` (device on CUDA with the device augmentation backend,
    else cpu). Validation always decodes in the workers.
    ``train_fraction``: train on that share of each training source's images (a seeded, nested subset:
    the label-scarcity studies of ``tools/compare_mtl.py``).
    ``test``: held-out sources evaluated once at the end of training and by ``tools/evaluate.py --split
    test`` (empty: none).
    """

    root: str = "data/shapes"
    synthetic: Literal["shapes"] | None = None
    synthetic_train_images: int = 2000
    synthetic_val_images: int = 200
    train: list[SourceConfig] = field(default_factory=lambda: _shapes_split("train"))
    val: list[SourceConfig] = field(default_factory=lambda: _shapes_split("val"))
    test: list[SourceConfig] = field(default_factory=list)
    train_fraction: float = 1.0
    image_size: int = 128
    seg_classes: list[str] | None = None
    num_workers: int = 1
    decode: Literal["auto", "cpu", "device"] = "auto"


@dataclass
class LossWeights:
    """Static per-task loss weights (the simplest balancer).

    Detection and segmentation get 2.0 by default: at classification 2, detection 1 the jointly trained
    model lost a third of the single-task detection mAP on the shapes run; classification 1 with
    detection and segmentation 2 gave the best Δm of the weights compared (+7.2 % at 6 epochs) and, over
    the 12-epoch default run, mIoU +0.024 and mAP +0.005 against segmentation 1 (docs/mtl.md).
    """

    classification: float = 1.0
    detection: float = 2.0
    segmentation: float = 2.0


@dataclass
class AugmentConfig:
    """Batched augmentation on the training device (``vision_mtl/data/augment/device.py``, on kornia).

    ``preset`` fills in every key left null (``vision_mtl/data/augment/presets.py``): ``none``;
    ``light`` (flip, brightness/contrast); ``default`` (adds random resized crop, affine, colour, blur,
    noise, grayscale); ``strong`` (the same, wider and more often). A key set explicitly overrides its
    preset value. Probabilities per sample: hflip, crop, affine, blur, noise, grayscale. crop_scale:
    [min, max] area fraction the crop keeps; rotate, shear: +- degrees; translate: +- fraction of the
    size; scale: [min, max] zoom of the affine; brightness, contrast, saturation, hue: jitter strengths;
    blur_sigma: [min, max]; noise_std: on [0, 1] images; min_box_area: a box keeping less than this
    fraction of its (transformed) area inside the image is dropped. mosaic, mixup: probabilities of
    the batch mixes (``data/augment/mix.py``: mosaic of 4 images; mixup ratio ~ Beta(32, 32)), always on
    the device; mix_off_epochs: no mixing in the last N epochs. backend: where the rest runs, ``device``
    (kornia, on the batch) or ``albumentations`` (per image in the DataLoader workers); ``auto`` is
    ``device`` on CUDA and ``albumentations`` on a CPU, where it measured 6x faster (4.83 against
    0.80 images/s, preset default at 640 px; ``CPU_BACKEND`` in ``augment/presets.py``).
    """

    preset: Literal["none", "light", "default", "strong"] = "light"
    hflip: float | None = None
    crop: float | None = None
    crop_scale: list[float] | None = None
    affine: float | None = None
    rotate: float | None = None
    shear: float | None = None
    translate: float | None = None
    scale: list[float] | None = None
    min_box_area: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    blur: float | None = None
    blur_sigma: list[float] | None = None
    noise: float | None = None
    noise_std: float | None = None
    grayscale: float | None = None
    mosaic: float | None = None
    mixup: float | None = None
    mix_off_epochs: int | None = None
    backend: Literal["auto", "device", "albumentations"] = "auto"


@dataclass
class TrainConfig:
    """Optimisation schedule, precision, EMA and run bookkeeping.

    ``batch_size`` is per process (``torchrun`` multiplies it by the number of processes) and per
    micro-step: one optimiser step sees ``batch_size * accumulate`` images a process. ``amp``: ``auto``
    is bf16 on a CUDA device that supports it and fp32 elsewhere; ``bf16``/``fp16`` force it (fp16
    only on CUDA, with a gradient scaler). ``ema_decay``: 0 turns the weight EMA off; with it on,
    validation, ``best.pt`` and export use the averaged weights. ``checkpoint_every``: also write
    ``last.pt`` every N optimiser steps inside an epoch. ``patience``: stop after N epochs without a
    better ``monitor`` value (default: the mean headline metric). ``max_minutes``: fit the number of
    epochs to this wall-clock budget after the first epoch.
    """

    epochs: int = 12
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 2e-3
    backbone_lr_mult: float = 1.0
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 10.0
    accumulate: int = 1
    loss_weights: LossWeights = field(default_factory=LossWeights)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    compile: bool = False
    channels_last: bool = True
    sync_bn: bool = False
    ema_decay: float = 0.9998
    seed: int = 0
    max_steps_per_epoch: int | None = None
    checkpoint_every: int | None = None
    patience: int | None = None
    monitor: str | None = None
    max_minutes: float | None = None
    log_every: int = 20
    plots: bool = True


@dataclass
class MTLConfig:
    """How the task losses are combined (``vision_mtl/mtl``). ``balancer``: fixed (``train.loss_weights``),
    uncertainty (Kendall 2018, learned), dwa (Liu 2019, from the last two epochs' losses, temperature
    ``dwa_temperature``), rlw (random weights each step, Lin 2021) or gradnorm (Chen 2018, learned to
    equalise the tasks' gradient norms, asymmetry ``gradnorm_alpha``); or a gradient aggregator
    (TorchJD): pcgrad, upgrad, mgda, imtl_g, aligned_mtl, cagrad (its radius ``cagrad_c``).
    ``schedule``: which tasks each step trains (``vision_mtl/mtl/schedule.py``): all, or
    ``schedule_tasks_per_step`` of them by round_robin, proportional (to their labelled training
    images) or loss_progress (slower loss fall, more steps; softmax temperature ``schedule_temperature``)."""

    balancer: str = "fixed"
    dwa_temperature: float = 2.0
    gradnorm_alpha: float = 1.5
    cagrad_c: float = 0.4
    schedule: Literal["all", "round_robin", "proportional", "loss_progress"] = "all"
    schedule_tasks_per_step: int = 1
    schedule_temperature: float = 0.5


@dataclass
class RunConfig:
    """Where outputs go: ``<dir>/<name>/``."""

    name: str = "shapes"
    dir: str = "runs"


@dataclass
class Config:
    """The whole configuration of a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mtl: MTLConfig = field(default_factory=MTLConfig)
    run: RunConfig = field(default_factory=RunConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> Config:
    """Defaults, then ``base`` (e.g. a checkpoint's config), then the YAML file, then ``a.b=value``
    overrides; validated throughout."""
    raw: dict[str, Any] = copy.deepcopy(base) if base else {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' not found; pass an existing YAML file to --config")
        try:
            text = path.read_text()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file '{path}' is not text ({exc.reason} at byte {exc.start}); pass a YAML "
                              "file to --config") from exc
        loaded = _parse_yaml(text, f"config file '{path}'")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
        _merge(raw, loaded or {})
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.epochs=5")
        _set_dotted(raw, key.strip(), _parse_yaml(text, f"override '{item}'", len(key) + 1) if text.strip() else None)
    cfg = config_from_dict(raw)
    validate(cfg)
    return cfg


def _parse_yaml(text: str, where: str, column_offset: int = 0) -> Any:
    """``text`` parsed as YAML; a syntax error is one line naming ``where``, the line and column (the
    first line's columns shifted by ``column_offset``: where the text starts in an override) and the
    problem."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = ""
        if mark is not None:
            at = f" at line {mark.line + 1}, column {mark.column + 1 + (column_offset if mark.line == 0 else 0)}"
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from exc


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a Config from nested plain data (a YAML file or a checkpoint's saved config).

    The data is merged onto the defaults first, so a partial section (``data.train.labels=null``)
    changes only the keys it names.
    """
    merged = dataclasses.asdict(Config())
    _merge(merged, raw)
    return _build(Config, merged, "")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested data, safe for YAML, JSON and ``torch.save(weights_only)``."""
    return dataclasses.asdict(cfg)


def flat_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config data flattened to dotted keys (``train.lr``); lists stay whole values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# Sizes and counts: the least value each accepts (null, where allowed, is not checked).
_MINIMUM: dict[str, int] = {
    "data.image_size": 32, "data.synthetic_train_images": 1, "data.synthetic_val_images": 1, "data.num_workers": 0,
    "model.neck_channels": 1, "model.segmentation.channels": 1, "model.detection.num_convs": 0,
    "model.detection.pre_nms_topk": 1, "model.detection.max_detections": 1,
    "train.epochs": 1, "train.batch_size": 1, "train.max_steps_per_epoch": 1, "train.accumulate": 1,
    "train.log_every": 1, "train.checkpoint_every": 1, "train.patience": 1, "mtl.schedule_tasks_per_step": 1,
}


def _get_dotted(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config) -> None:
    """Cross-field checks the type schema cannot express."""
    if not cfg.model.tasks:
        raise ConfigError("model.tasks is empty; choose one or more of " + ", ".join(TASKS))
    if len(set(cfg.model.tasks)) != len(cfg.model.tasks):
        raise ConfigError(f"model.tasks lists a task twice: {cfg.model.tasks}")
    for key, minimum in _MINIMUM.items():
        value = _get_dotted(cfg, key)
        if value is not None and value < minimum:
            raise ConfigError(f"{key}={value} must be >= {minimum}")
    _validate_sharing(cfg.model)
    if cfg.data.image_size % 32:
        raise ConfigError(f"data.image_size={cfg.data.image_size} must be a multiple of 32, e.g. "
                          f"{(cfg.data.image_size // 32 + 1) * 32}")
    for name, levels in (("classification", cfg.model.classification.levels),
                         ("detection", cfg.model.detection.levels),
                         ("segmentation", cfg.model.segmentation.levels)):
        if not levels or any(not 2 <= lv <= 7 for lv in levels):
            raise ConfigError(f"model.{name}.levels={levels} must be a non-empty list of pyramid levels in 2..7")
    if cfg.model.segmentation.levels and min(cfg.model.segmentation.levels) > 3:
        raise ConfigError("model.segmentation.levels must include level 2 or 3 (the finest output)")
    for key in ("train.lr", "train.backbone_lr_mult", "train.max_minutes", "mtl.dwa_temperature",
                "mtl.schedule_temperature"):
        value = _get_dotted(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}={value} must be > 0")
    per_step, tasks = cfg.mtl.schedule_tasks_per_step, len(cfg.model.tasks)
    if cfg.mtl.schedule != "all" and per_step > tasks:
        raise ConfigError(f"mtl.schedule_tasks_per_step={per_step} is more than the {tasks} task(s) in model.tasks; "
                          f"give at most {tasks}, or mtl.schedule=all")
    for key in ("mtl.gradnorm_alpha", "mtl.cagrad_c"):
        if _get_dotted(cfg, key) < 0:
            raise ConfigError(f"{key}={_get_dotted(cfg, key)} must be >= 0")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay={cfg.train.ema_decay} must be in [0, 1) (0 turns the EMA off)")
    _validate_run_name(cfg.run.name)
    for split in ("train", "val"):
        _validate_sources(getattr(cfg.data, split), f"data.{split}")
    if cfg.data.test:
        _validate_sources(cfg.data.test, "data.test")
    if not 0 < cfg.data.train_fraction <= 1:
        raise ConfigError(f"data.train_fraction={cfg.data.train_fraction} must be in (0, 1]; 1 trains on every image")


def _validate_sharing(model: ModelConfig) -> None:
    """Backbone stages exist as 1..5 (C1..C5); a branch point needs a stage after it; one source of
    backbone weights."""
    if not 1 <= model.branch_stage <= 4:
        raise ConfigError(f"model.branch_stage={model.branch_stage} must be in 1..4 (stages up to it are shared; "
                          "5 would share the whole backbone: use model.sharing=neck)")
    if not 0 <= model.freeze_stages <= 5:
        raise ConfigError(f"model.freeze_stages={model.freeze_stages} must be in 0..5 (0 freezes nothing)")
    if model.unfreeze_epoch is not None and (model.unfreeze_epoch < 1 or not model.freeze_stages):
        raise ConfigError(f"model.unfreeze_epoch={model.unfreeze_epoch} needs model.freeze_stages >= 1 and an epoch "
                          ">= 1; set model.freeze_stages or model.unfreeze_epoch=null")
    if model.pretrained and model.backbone_weights:
        raise ConfigError(f"model.pretrained=true and model.backbone_weights={model.backbone_weights} both set the "
                          "backbone's weights; drop one of them")
    if model.freeze_stages and "backbone" in model.freeze:
        raise ConfigError("model.freeze_stages and model.freeze=[backbone] both freeze the backbone; drop one of them")


def _validate_run_name(name: str) -> None:
    """``run.name`` is one folder name inside ``run.dir``: nothing that could point elsewhere."""
    if not name or name in (".", "..") or any(c in name for c in "/\\") or Path(name).is_absolute():
        raise ConfigError(f"run.name={name!r} must be a plain folder name (no '/', '\\' or '..'); "
                          "put the parent folder in run.dir")


def _validate_sources(sources: list[SourceConfig], key: str) -> None:
    """Each source names the locations its format needs and none that it would ignore."""
    if not sources:
        raise ConfigError(f"{key} lists no sources; give at least one, e.g. [{{format: coco, images: ..., "
                          "annotations: ...}]")
    for i, source in enumerate(sources):
        where = f"{key}[{i}] (format {source.format})"
        required, optional = SOURCE_KEYS[source.format]
        for name in required:
            if not getattr(source, name):
                raise ConfigError(f"{where} needs '{name}'")
        for name in {k for keys in SOURCE_KEYS.values() for k in keys[0] + keys[1]} - {*required, *optional}:
            if getattr(source, name) is not None:
                raise ConfigError(f"{where} does not read '{name}'; it reads {', '.join(required + optional)}")
        if source.weight <= 0:
            raise ConfigError(f"{where}: weight={source.weight} must be > 0")
        if source.labels and source.label_field:
            raise ConfigError(f"{where}: give 'labels' or 'label_field', not both")
        for name in _CSV_COLUMNS:
            if getattr(source, name) is not None and not source.labels:
                raise ConfigError(f"{where}: '{name}' names a column of the 'labels' CSV, and this source reads "
                                  f"none; give 'labels' too, or drop '{name}'")
        if source.classes is not None and source.format in ("coco", "yolo"):
            raise ConfigError(f"{where}: its file declares the classes; rename or merge them with class_map")
        if any(isinstance(k, int) for k in source.class_map or {}) and source.format not in ("masks", "files", "voc"):
            raise ConfigError(f"{where}: integer class_map keys map mask values, and only masks, files and voc "
                              "sources have masks")
        _validate_image_labels(source, where)


def _validate_image_labels(source: SourceConfig, where: str) -> None:
    """``fraction``, and one way of giving image-level classes: ``labels``, ``label_list`` or ``label_pattern``."""
    if source.fraction is not None and not (len(source.fraction) == 2 and 0 <= source.fraction[0] < source.fraction[1] <= 1):
        raise ConfigError(f"{where}: fraction={source.fraction} must be [start, end] with 0 <= start < end <= 1")
    given = [key for key in ("labels", "label_list", "label_pattern") if getattr(source, key)]
    if len(given) > 1:
        raise ConfigError(f"{where}: give one of 'labels', 'label_list' and 'label_pattern', not {' and '.join(given)}")
    if bool(source.label_list) != bool(source.label_ids):
        raise ConfigError(f"{where}: 'label_list' and 'label_ids' ({{class-id: name}}) go together; give both or neither")
    if source.label_pattern:
        try:
            if re.compile(source.label_pattern).groups < 1:
                raise re.error("it has no group (the class name is the first group)")
        except re.error as exc:
            raise ConfigError(f"{where}: label_pattern {source.label_pattern!r} is not a usable regular expression: "
                              f"{exc}") from None


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Mappings merge key by key; anything else replaces. A mapping given for a list of sources
    edits the one source there (``data.train.labels=null``, and configs saved before splits were
    lists), or replaces the list when that has several sources or the mapping changes the format."""
    for key, value in update.items():
        current = into.get(key)
        if isinstance(value, dict) and isinstance(current, list):
            if _edits_single_source(current, value):
                _merge(current[0], value)
            else:
                into[key] = [value]
        elif isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value)
        else:
            into[key] = value


def _edits_single_source(sources: list, update: dict[str, Any]) -> bool:
    if len(sources) != 1 or not isinstance(sources[0], dict) or "format" not in sources[0]:
        return False
    return update.get("format", sources[0]["format"]) == sources[0]["format"]


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if isinstance(child, list):
            raise ConfigError(f"override '{key}': '{part}' is a list here; set it whole, e.g. {part}=[{{...}}]")
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(fields)}")
    return cls(**{name: _coerce(hints[name], value, prefix + name) for name, value in raw.items()})


YAML_WORDS = {False: "off", True: "on"}


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key '{key}' expects {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and YAML_WORDS[value] in args:  # YAML 1.1 reads `off` as false, `on` as true
            value = YAML_WORDS[value]
        if value not in args:
            raise ConfigError(f"config key '{key}' got {value!r}; valid choices: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return {_coerce(args[0], k, f"{key} (a key)"): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config key '{key}' expects {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        key, value = typing.get_args(hint)
        return f"a mapping of {_describe(key)} to {_describe(value)}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
