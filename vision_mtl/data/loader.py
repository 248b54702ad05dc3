"""From a DataConfig to DataLoaders: synthetic data on first use, class discovery, collate."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader

from vision_mtl.config import Config
from vision_mtl.data.dataset import MultiTaskDataset, SplitSources, discover_classes, read_split
from vision_mtl.data.sample import collate
from vision_mtl.data.shapes import ensure_shapes


@dataclass
class DataBundle:
    """What training needs from the data: loaders plus the class names the model is built for."""

    train: DataLoader | None
    val: DataLoader
    classes: dict[str, list[str]]
    category_ids: list[int] | None  # original COCO ids of the detection classes


def prepare_synthetic(cfg: Config) -> None:
    """Write the built-in dataset under ``data.root`` if the config asks for it and it is missing."""
    if cfg.data.synthetic == "shapes":
        ensure_shapes(cfg.data.root, cfg.data.synthetic_train_images, cfg.data.synthetic_val_images,
                      cfg.data.image_size)


def build_data(cfg: Config, classes: dict[str, list[str]] | None = None, train: bool = True) -> DataBundle:
    """Loaders for the val split (and train when ``train``); classes come from the training split
    unless given (a checkpoint's classes, so evaluation uses the model's own class order)."""
    prepare_synthetic(cfg)
    train_sources = read_split(cfg.data, cfg.data.train, "train") if train or classes is None else None
    if classes is None:
        classes = discover_classes(train_sources, cfg.data, cfg.model.tasks)
    val_sources = read_split(cfg.data, cfg.data.val, "val")
    train_loader = make_loader(cfg, train_sources, classes, shuffle=True) if train else None
    val_loader = make_loader(cfg, val_sources, classes, shuffle=False)
    ground_truth = val_loader.dataset.detection_ground_truth()
    category_ids = ground_truth.category_ids if ground_truth is not None else None
    return DataBundle(train_loader, val_loader, classes, category_ids)


def make_loader(cfg: Config, sources: SplitSources, classes: dict[str, list[str]], shuffle: bool) -> DataLoader:
    """A DataLoader of collated :class:`Batch` objects for one split."""
    multi_label = cfg.model.classification.multi_label
    dataset = MultiTaskDataset(sources, cfg.model.tasks, classes, cfg.data.image_size, multi_label)
    collate_fn = partial(collate, tasks=cfg.model.tasks, num_cls_classes=len(classes.get("classification", [])),
                         multi_label=multi_label)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) > cfg.train.batch_size,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        collate_fn=collate_fn,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
    )
