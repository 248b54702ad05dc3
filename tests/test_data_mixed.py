"""Mixed sources: several sources per split, each labelling some tasks, weighted in training; class
lists reconciled at start-up; and a run where each head learns from its own source only."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from conftest import SHAPES_CLASSES, one_line
from data_scenes import NAMES, write_coco, write_images, write_label_csv
from vision_mtl.data.sample import to_float
from vision_mtl.data.loader import build_data
from vision_mtl.training.trainer import Trainer
from vision_mtl.errors import DataError


def flow(*sources: dict) -> str:
    return yaml.safe_dump(list(sources), default_flow_style=True, width=10_000).strip()


def mixed_config(make_config, root: Path, train: list[dict], val: list[dict] | None = None, *extra: str):
    return make_config("data.synthetic=null", f"data.root={root}", f"data.train={flow(*train)}",
                       f"data.val={flow(*(val or train))}", *extra)


@pytest.fixture
def scene_root(tmp_path) -> Path:
    write_images(tmp_path / "images")
    write_coco(tmp_path / "coco.json")
    return tmp_path


COCO = {"format": "coco", "images": "images", "annotations": "coco.json"}


# ------------------------------------------------------------------------------ class lists

def test_class_lists_must_agree_across_sources_or_be_mapped(scene_root, make_config):
    other = json.loads((scene_root / "coco.json").read_text())
    other["categories"][2]["name"] = "rod"  # 'bar' under another name
    (scene_root / "other.json").write_text(json.dumps(other))
    second = {**COCO, "annotations": "other.json"}
    tasks = "model.tasks=[detection, segmentation]"
    with pytest.raises(DataError) as info:
        build_data(mixed_config(make_config, scene_root, [COCO, second], None, tasks), train=False)
    message = str(info.value)
    assert one_line(message)
    for needle in ("data.train[0] (coco)", "data.train[1] (coco)", "'rod'", "'bar'", "class_map"):
        assert needle in message

    mapped = {**second, "class_map": {"rod": "bar"}}
    data = build_data(mixed_config(make_config, scene_root, [COCO, mapped], None, tasks), train=False)
    assert data.classes["detection"] == NAMES
    dataset = data.val.dataset
    bars = [dataset[i].labels.tolist() for i in range(len(dataset)) if dataset.records[i].key == "b.png"]
    assert bars[0] == bars[1]  # the renamed class lands on the same index


def test_labels_outside_the_declared_classes_are_an_error(scene_root, make_config):
    write_label_csv(scene_root / "labels.csv", {"a.png": "square", "b.png": "circle"})
    sources = [COCO, {"format": "csv", "images": "images", "labels": "labels.csv"}]
    with pytest.raises(DataError) as info:
        build_data(mixed_config(make_config, scene_root, sources, None, "model.tasks=[classification]",
                                "model.classification.multi_label=true"), train=False)
    assert one_line(info.value) and "circle" in str(info.value) and "data.train[1] (csv)" in str(info.value)


def test_val_classes_must_be_the_models(scene_root, make_config):
    cfg = mixed_config(make_config, scene_root, [COCO], None, "model.tasks=[detection]")
    with pytest.raises(DataError) as info:
        build_data(cfg, classes={"detection": ["square", "triangle", "circle"]}, train=False)
    assert one_line(info.value) and "data.val[0] (coco)" in str(info.value) and "circle" in str(info.value)


def test_a_source_cannot_be_asked_for_a_task_it_does_not_label(scene_root, make_config):
    write_label_csv(scene_root / "labels.csv", {"a.png": "x"})
    csv_source = {"format": "csv", "images": "images", "labels": "labels.csv", "tasks": ["detection"]}
    with pytest.raises(DataError) as info:
        build_data(mixed_config(make_config, scene_root, [COCO, csv_source]), train=False)
    assert one_line(info.value) and "data.train[1] (csv) does not label detection" in str(info.value)


def test_no_source_for_a_model_task_is_an_error(scene_root, make_config):
    with pytest.raises(DataError) as info:
        build_data(mixed_config(make_config, scene_root, [{**COCO, "tasks": ["detection"]}], None,
                                "model.tasks=[detection, segmentation]"), train=False)
    assert one_line(info.value) and "segmentation" in str(info.value) and "no data.train source" in str(info.value)


# ------------------------------------------------------------------------- sampling and ids

def test_training_draws_follow_source_weights_and_val_goes_through_each_source_once(scene_root, make_config):
    write_label_csv(scene_root / "labels.csv", {"a.png": "x", "b.png": "y", "sub/c.png": "x", "d.png": "y"})
    light = {"format": "csv", "images": "images", "labels": "labels.csv"}
    heavy = {**light, "weight": 3.0}
    # the device backend: the sampler yields plain indices (albumentations also gets a seed per draw)
    cfg = mixed_config(make_config, scene_root, [light, heavy], None, "model.tasks=[classification]",
                       "train.augment.backend=device")
    data = build_data(cfg)
    draws = Counter()
    for epoch in range(50):
        data.train.sampler.set_epoch(epoch)
        draws.update(data.train.dataset.source_of[list(iter(data.train.sampler))].tolist())
    assert draws[1] / draws[0] == pytest.approx(3.0, rel=0.15)
    val = data.val.dataset
    order = [(val[i].meta["source"], val[i].meta["key"]) for i in range(len(val))]
    assert order == [(f"data.val[{s}] (csv)", k) for s in (0, 1) for k in ("a.png", "b.png", "sub/c.png", "d.png")]
    assert data.val.sampler.__class__.__name__ == "SequentialSampler"


def test_equal_weights_keep_plain_shuffling(make_config):
    data = build_data(make_config("train.augment.backend=device"))
    sampler = data.train.sampler
    assert sampler.weights is None
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == sorted(sampler) == list(range(len(data.train.dataset))) and first != list(sampler)


def test_image_ids_stay_unique_across_sources(scene_root, make_config):
    shutil.copytree(scene_root / "images", scene_root / "more")
    second = {**COCO, "images": "more"}
    data = build_data(mixed_config(make_config, scene_root, [COCO, second], None, "model.tasks=[detection]"),
                      train=False)
    gt = data.val.dataset.detection_ground_truth().coco
    ids = [img["id"] for img in gt["images"]]
    assert len(set(ids)) == 8 and ids[:4] == [100, 101, 102, 103]  # the first source keeps its own ids
    dataset = data.val.dataset
    assert sorted(dataset[i].meta["image_id"] for i in range(len(dataset))) == sorted(ids)
    assert len(gt["annotations"]) == 2 * 6 and len({a["id"] for a in gt["annotations"]}) == 12


# ------------------------------------------------------------------------ a mixed-source run

def _split_shapes(shapes: Path, root: Path) -> list[dict]:
    """Shapes train images in three disjoint groups: boxes from COCO for the first, masks for the
    second, scene labels from a CSV for the third (which declares the scene classes: its 10 images
    need not show all four)."""
    images = sorted((shapes / "train" / "images").iterdir())
    groups = {"det": images[0:11], "seg": images[11:22], "cls": images[22:]}
    for name, files in groups.items():
        (root / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / name / f.name)
    coco = json.loads((shapes / "train" / "annotations.json").read_text())
    keep = {f.name for f in groups["det"]}
    coco["images"] = [img for img in coco["images"] if img["file_name"] in keep]
    ids = {img["id"] for img in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    (root / "det.json").write_text(json.dumps(coco))
    with open(shapes / "train" / "labels.csv", newline="") as fh:
        scenes = {row["file"]: row["label"] for row in csv.DictReader(fh)}
    write_label_csv(root / "cls.csv", {f.name: scenes[f.name] for f in groups["cls"]})
    return [
        {"format": "coco", "images": "det", "annotations": "det.json", "tasks": ["detection"]},
        {"format": "masks", "images": "seg", "masks": str(shapes / "train" / "masks"),
         "classes": SHAPES_CLASSES["segmentation"]},
        {"format": "csv", "images": "cls", "labels": "cls.csv", "classes": SHAPES_CLASSES["classification"]},
    ]


def _task_losses(trainer: Trainer, batch) -> dict[str, float]:
    model = trainer.model
    with torch.no_grad():
        losses = model.loss(model(to_float(batch.images)), batch.targets)
    return {task: float(sum(parts.values())) for task, parts in losses.items()}


def test_mixed_source_run_trains_each_head_from_its_own_source(shapes_root, make_config, tmp_path):
    sources = _split_shapes(shapes_root, tmp_path / "mixed")
    cfg = mixed_config(make_config, tmp_path / "mixed", sources, None, "train.batch_size=8", "train.epochs=12",
                       "train.max_steps_per_epoch=4", "train.warmup_epochs=0.25", "train.lr=0.004")
    trainer = Trainer(cfg, run_dir=tmp_path)
    assert trainer.data.classes == SHAPES_CLASSES
    val = trainer.data.val
    everything = next(iter(DataLoader(val.dataset, batch_size=len(val.dataset), collate_fn=val.collate_fn)))
    for i, meta in enumerate(everything.meta):
        valid = {task for task in everything.targets if everything.targets[task]["valid"][i]}
        expected = {"data.val[0] (coco)": {"detection"}, "data.val[1] (masks)": {"segmentation"},
                    "data.val[2] (csv)": {"classification"}}[meta["source"]]
        assert valid == expected, meta
    trainer.model.train()
    before = _task_losses(trainer, everything)
    step = 0
    while step < 48:
        for batch in trainer.data.train:
            trainer.training_step(batch)
            step += 1
    after = _task_losses(trainer, everything)
    for task in ("classification", "detection", "segmentation"):
        assert after[task] < 0.8 * before[task], (task, before, after)
