"""From a DataConfig to DataLoaders: synthetic data on first training, sources, class discovery, collate."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vision_mtl.config import Config
from vision_mtl.data.augment.albu import AlbumentationsAugment
from vision_mtl.data.augment.presets import resolve_backend
from vision_mtl.data.classes import discover_classes
from vision_mtl.data.dataset import MultiTaskDataset
from vision_mtl.data.augment.decode import decodes_on_device
from vision_mtl.data.sample import collate
from vision_mtl.data.sampler import EpochSampler
from vision_mtl.data.shapes import ensure_shapes
from vision_mtl.data.sources import Split, read_split, require_targets
from vision_mtl.errors import DataError
from vision_mtl.utils.runtime import resolve_device


@dataclass
class DataBundle:
    """What training needs from the data: loaders plus the class names the model is built for."""

    train: DataLoader | None
    val: DataLoader
    classes: dict[str, list[str]]
    category_ids: list[int] | None  # the id detection results are written with, per detection class


def prepare_synthetic(cfg: Config) -> None:
    """Write the built-in dataset under ``data.root`` if the config asks for it and it is missing."""
    if cfg.data.synthetic == "shapes":
        ensure_shapes(cfg.data.root, cfg.data.synthetic_train_images, cfg.data.synthetic_val_images,
                      cfg.data.image_size)


def build_data(cfg: Config, classes: dict[str, list[str]] | None = None, train: bool = True,
               rank: int = 0, world: int = 1, eval_split: str = "val") -> DataBundle:
    """Loaders for the ``eval_split`` (``val`` or ``test``; held in ``DataBundle.val``) and train when
    ``train``, sharded for process ``rank`` of ``world``; classes come from the training sources unless
    given (a checkpoint's classes, so evaluation uses the model's own class order).

    Only training writes synthetic data: evaluation reads what is there, whatever its settings, so
    it can never replace the dataset a model was trained on. Training stops at once when its split
    has nothing to learn a task from.
    """
    if train:
        prepare_synthetic(cfg)
    elif cfg.data.synthetic and not Path(cfg.data.root).is_dir():
        raise DataError(f"data.root '{cfg.data.root}' not found: the {cfg.data.synthetic} dataset is written by "
                        "training (tools/train.py), never by evaluation; train first or point data.root at the data")
    train_split = read_split(cfg, "train") if train or classes is None else None
    if train:
        require_targets(train_split, cfg.model.tasks)
    if classes is None:
        classes = discover_classes(train_split.sources, cfg.model.tasks)
    train_loader = make_loader(cfg, train_split, classes, True, rank, world) if train else None
    if not getattr(cfg.data, eval_split):
        raise DataError(f"data.{eval_split} lists no sources; add held-out sources under data.{eval_split} in the "
                        "config, or evaluate the val split")
    val_loader = make_loader(cfg, read_split(cfg, eval_split), classes, train=False)
    ground_truth = val_loader.dataset.detection_ground_truth()
    category_ids = ground_truth.category_ids if ground_truth is not None else None
    return DataBundle(train_loader, val_loader, classes, category_ids)


def make_loader(cfg: Config, split: Split, classes: dict[str, list[str]], train: bool,
                rank: int = 0, world: int = 1) -> DataLoader:
    """A DataLoader of collated :class:`Batch` objects for one split.

    Training draws through an :class:`EpochSampler` (shuffled, or by the sources' weights when they
    differ, one epoch = as many images as the split holds, sharded over ``world`` processes);
    validation goes through every image once, in order. With the albumentations backend the training
    workers augment each image (``augment/albu.py``), seeded through the sampler; when JPEGs are
    decoded on the device (``data.decode``) the training workers hand over their bytes instead.
    """
    multi_label = cfg.model.classification.multi_label
    dataset = MultiTaskDataset(split, cfg.model.tasks, classes, cfg.data.image_size, multi_label)
    collate_fn = partial(collate, tasks=cfg.model.tasks, num_cls_classes=len(classes.get("classification", [])),
                         multi_label=multi_label)
    device = resolve_device(cfg.train.device)
    per_image = train and resolve_backend(cfg.train.augment, device) == "albumentations"
    if per_image:
        dataset.augment = AlbumentationsAugment(cfg.train.augment, cfg.data.image_size)
    dataset.defer_jpeg = train and decodes_on_device(cfg, device)
    dataset.decode_to_fit = not train  # as the Predictor and folder inference read images
    sampler = EpochSampler(len(dataset), cfg.train.seed, dataset.sample_weights(), rank, world,
                           with_seeds=per_image) if train else None
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        drop_last=train and len(dataset) // world > cfg.train.batch_size,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        collate_fn=collate_fn,
        worker_init_fn=leave_stop_signals_to_main,
        generator=torch.Generator().manual_seed(cfg.train.seed),  # worker seeds: never from the global RNG
        pin_memory=torch.cuda.is_available(),
    )


def leave_stop_signals_to_main(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C and a SIGTERM sent to the whole process group (as Slurm,
    Kubernetes and ``docker stop`` preempt a job) are for the main process, which finishes its step,
    saves and stops; a worker they killed would end the run with a RuntimeError instead. A SIGTERM
    from the main process itself (how it ends its workers at exit) still ends the worker, as in torch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):  # not on macOS or Windows: there the worker keeps torch's handling
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True).start()


def _exit_on_sigterm_from(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)
