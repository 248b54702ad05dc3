"""Data: the synthetic generator, the dataset readers, letterbox, collate and device augmentation."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import NUM_TRAIN, NUM_VAL, SHAPES_CLASSES, one_line
from vision_mtl.config import AugmentConfig
from vision_mtl.data.classes import discover_classes
from vision_mtl.data.dataset import MultiTaskDataset
from vision_mtl.data.augment.device import DeviceAugment
from vision_mtl.data.loader import build_data
from vision_mtl.data.sample import IGNORE_INDEX, PAD_VALUE, Batch, Sample, collate
from vision_mtl.data.shapes import MARKER, ensure_shapes
from vision_mtl.data.sources import read_split
from vision_mtl.data.transforms import letterbox
from vision_mtl.engine.results import split_predictions
from vision_mtl.errors import DataError, VisionMTLError

TASKS = ["classification", "detection", "segmentation"]


def mask_bbox(mask: np.ndarray, value: int) -> list[int]:
    """xyxy (exclusive max) of the pixels equal to ``value``."""
    ys, xs = np.nonzero(mask == value)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


# ------------------------------------------------------------------------------ shapes generator

def test_shapes_split_loads_through_dataset_with_boxes_matching_coco(shapes_root, make_config):
    cfg = make_config()
    split = read_split(cfg, "train")
    classes = discover_classes(split.sources, TASKS)
    assert classes == SHAPES_CLASSES
    dataset = MultiTaskDataset(split, TASKS, classes, cfg.data.image_size)
    assert len(dataset) == NUM_TRAIN

    coco = json.loads((shapes_root / "train" / "annotations.json").read_text())
    by_file = {img["file_name"]: img["id"] for img in coco["images"]}
    with open(shapes_root / "train" / "labels.csv", newline="") as fh:
        scenes = {row["file"]: row["label"] for row in csv.DictReader(fh)}
    for index in range(len(dataset)):
        sample = dataset[index]
        key = sample.meta["key"]
        image_id = by_file[key]
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
        assert sample.has == set(TASKS)
        assert sample.meta["image_id"] == image_id
        assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
        np.testing.assert_allclose(sample.boxes, expected.reshape(-1, 4))
        np.testing.assert_array_equal(sample.labels, [a["category_id"] - 1 for a in anns])
        assert sample.label == classes["classification"].index(scenes[key])
        assert sample.mask.shape == (64, 64)
        # every object's mask pixels lie inside the boxes of its class
        for value in np.unique(sample.mask):
            if value == 0:
                continue
            assert value - 1 in sample.labels
            covered = np.zeros_like(sample.mask, dtype=bool)
            for x1, y1, x2, y2 in sample.boxes[sample.labels == value - 1].astype(int):
                covered[y1:y2, x1:x2] = True
            assert covered[sample.mask == value].all()
        # and every box is the tight bounding box of pixels of its class (visible part)
        for box, label in zip(sample.boxes, sample.labels):
            x1, y1, x2, y2 = box.astype(int)
            assert (sample.mask[y1:y2, x1:x2] == label + 1).any()


def test_ensure_shapes_reuses_matching_dataset(shapes_root):
    meta = shapes_root / MARKER
    stamp = meta.stat().st_mtime_ns
    assert ensure_shapes(shapes_root, NUM_TRAIN, NUM_VAL, 64) == shapes_root
    assert meta.stat().st_mtime_ns == stamp
    assert json.loads(meta.read_text())["num_train"] == NUM_TRAIN
    assert len(list((shapes_root / "val" / "images").iterdir())) == NUM_VAL


def test_ensure_shapes_is_deterministic_and_seeded(tmp_path):
    a = ensure_shapes(tmp_path / "a", num_train=3, num_val=1, image_size=64, seed=5)
    b = ensure_shapes(tmp_path / "b", num_train=3, num_val=1, image_size=64, seed=5)
    c = ensure_shapes(tmp_path / "c", num_train=3, num_val=1, image_size=64, seed=6)
    for rel in ("train/annotations.json", "train/labels.csv", "train/images/000002.jpg", "train/masks/000002.png",
                "val/annotations.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "train/annotations.json").read_bytes() != (c / "train/annotations.json").read_bytes()
    # changing a parameter regenerates in place
    ensure_shapes(tmp_path / "a", num_train=2, num_val=1, image_size=64, seed=5)
    assert len(list((a / "train" / "images").iterdir())) == 2
    assert not list(tmp_path.glob("*.tmp-*")) and not list(tmp_path.glob("*.old-*"))


def test_ensure_shapes_refuses_to_replace_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError):
        ensure_shapes(tmp_path / "mine", num_train=2, num_val=1, image_size=64)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_synthetic_over_a_foreign_folder_is_a_user_error(tmp_path, make_config):
    (tmp_path / "coco128" / "images").mkdir(parents=True)
    (tmp_path / "coco128" / "images" / "a.jpg").write_bytes(b"")
    cfg = make_config("data.synthetic=shapes", f"data.root={tmp_path / 'coco128'}")
    with pytest.raises(VisionMTLError) as info:
        build_data(cfg)
    assert one_line(info.value) and "data.synthetic" in str(info.value)


# ------------------------------------------------------------------------------------ errors

def test_missing_data_root_is_a_one_line_data_error(tmp_path, make_config):
    missing = tmp_path / "nowhere"
    cfg = make_config("data.synthetic=null", f"data.root={missing}")
    with pytest.raises(DataError) as info:
        build_data(cfg)
    assert one_line(info.value)
    assert str(missing) in str(info.value) and "data.root" in str(info.value)
    assert not missing.exists()


SPLIT = "{{images: {0}/images, annotations: {0}/{1}, masks: {0}/{2}, labels: {0}/{3}}}"


@pytest.mark.parametrize("override, needle", [
    ("data.train=" + SPLIT.format("train", "nope.json", "masks", "labels.csv"), "nope.json"),
    ("data.train=" + SPLIT.format("train", "annotations.json", "masks", "nope.csv"), "nope.csv"),
    ("data.val=" + SPLIT.format("val", "annotations.json", "nope", "labels.csv"), "nope"),
])
def test_missing_label_file_is_a_one_line_data_error(make_config, override, needle):
    cfg = make_config(override)
    with pytest.raises(DataError) as info:
        build_data(cfg)
    assert one_line(info.value) and needle in str(info.value)


def test_task_without_label_source_is_a_data_error(make_config):
    cfg = make_config("data.train={images: train/images, annotations: train/annotations.json, labels: null}",
                      "model.tasks=[classification]")
    with pytest.raises(DataError) as info:
        build_data(cfg)
    assert one_line(info.value) and "classification" in str(info.value)


def test_corrupt_annotation_json_is_a_data_error(tmp_path, shapes_root, make_config):
    root = tmp_path / "copy"
    shutil.copytree(shapes_root, root)
    (root / "val" / "annotations.json").write_text("{not json")
    cfg = make_config(f"data.root={root}")
    with pytest.raises(DataError) as info:
        build_data(cfg)
    assert one_line(info.value) and "annotations.json" in str(info.value)


def test_partial_labels_from_files_mark_tasks_invalid(tmp_path, shapes_root, make_config):
    """An image missing from one label source is unlabelled for that task only."""
    root = tmp_path / "partial"
    shutil.copytree(shapes_root, root)
    val = root / "val"
    coco = json.loads((val / "annotations.json").read_text())
    dropped = next(img for img in coco["images"] if img["file_name"] == "000000.jpg")
    coco["images"].remove(dropped)
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != dropped["id"]]
    (val / "annotations.json").write_text(json.dumps(coco))
    (val / "masks" / "000001.png").unlink()
    rows = (val / "labels.csv").read_text().splitlines()
    (val / "labels.csv").write_text("\n".join(r for r in rows if not r.startswith("000002.jpg")) + "\n")

    cfg = make_config(f"data.root={root}", f"train.batch_size={NUM_VAL}")
    batch = next(iter(build_data(cfg, classes=SHAPES_CLASSES, train=False).val))
    keys = [m["key"] for m in batch.meta]
    valid = {task: dict(zip(keys, batch.targets[task]["valid"].tolist())) for task in TASKS}
    assert valid["detection"]["000000.jpg"] is False
    assert valid["segmentation"]["000001.jpg"] is False
    assert valid["classification"]["000002.jpg"] is False
    assert sum(valid["detection"].values()) == NUM_VAL - 1
    assert sum(valid["segmentation"].values()) == NUM_VAL - 1
    assert sum(valid["classification"].values()) == NUM_VAL - 1
    i = keys.index("000000.jpg")
    assert (batch.targets["detection"]["labels"][i] == -1).all()
    j = keys.index("000001.jpg")
    assert (batch.targets["segmentation"]["mask"][j] == IGNORE_INDEX).all()


def test_loader_batches_follow_the_batch_contract(make_config):
    cfg = make_config("train.batch_size=4")
    data = build_data(cfg)
    assert data.classes == SHAPES_CLASSES
    assert data.category_ids == [1, 2, 3, 4]
    batch = next(iter(data.train))
    assert isinstance(batch, Batch) and len(batch) == 4
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (4, 3, 64, 64)
    det = batch.targets["detection"]
    assert det["boxes"].dim() == 3 and det["boxes"].shape[0] == 4 and det["boxes"].shape[2] == 4
    assert det["labels"].shape == det["boxes"].shape[:2]
    assert batch.targets["segmentation"]["mask"].shape == (4, 64, 64)
    assert batch.targets["segmentation"]["mask"].dtype == torch.int64
    assert batch.targets["classification"]["labels"].shape == (4,)
    for task in TASKS:
        assert batch.targets[task]["valid"].dtype == torch.bool and batch.targets[task]["valid"].all()


# ------------------------------------------------------------------------------------ letterbox

def _rect_sample(h: int, w: int, box: tuple[int, int, int, int], cls: int = 3) -> Sample:
    image = np.full((h, w, 3), 20, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = (200, 50, 90)
    mask[y1:y2, x1:x2] = cls
    return Sample(image=image, boxes=np.array([box], np.float32), labels=np.array([cls - 1]), mask=mask,
                  label=1, meta={"index": 0})


@pytest.mark.parametrize("h, w, box", [(40, 80, (10, 5, 30, 25)), (90, 45, (3, 50, 40, 88)), (20, 10, (2, 4, 8, 15))])
def test_letterbox_keeps_boxes_image_and_mask_aligned(h, w, box):
    size = 64
    out = letterbox(_rect_sample(h, w, box), size)
    scale = min(size / h, size / w)
    new_h, new_w = round(h * scale), round(w * scale)
    assert out.image.shape == (size, size, 3) and out.mask.shape == (size, size)
    assert out.meta["orig_size"] == (h, w) and out.meta["scale"] == pytest.approx(scale)
    # padding only bottom/right: image grey, mask ignore
    assert (out.image[new_h:] == PAD_VALUE).all() and (out.image[:, new_w:] == PAD_VALUE).all()
    assert (out.mask[new_h:] == IGNORE_INDEX).all() and (out.mask[:, new_w:] == IGNORE_INDEX).all()
    assert not (out.mask[:new_h, :new_w] == IGNORE_INDEX).any()
    np.testing.assert_allclose(out.boxes[0], np.array(box) * scale, rtol=1e-6)
    # the box, the mask region and the drawn pixels of the image agree within a pixel
    mask_box = mask_bbox(out.mask, 3)
    np.testing.assert_allclose(mask_box, out.boxes[0], atol=1.0)
    red = (out.image[..., 0] > 110) & (out.image[..., 0] < 255) & (out.image[..., 1] < 100)
    np.testing.assert_allclose(mask_bbox(red.astype(np.uint8), 1), out.boxes[0], atol=1.0)
    assert out.label == 1 and out.labels.tolist() == [2]


def test_split_predictions_maps_back_to_original_pixels():
    h, w, box = 40, 80, (10, 5, 30, 25)
    original = _rect_sample(h, w, box)
    net = letterbox(original, 64)
    mask = torch.from_numpy(np.where(net.mask == IGNORE_INDEX, 0, net.mask).astype(np.int64))[None]
    preds = {
        "classification": {"scores": torch.tensor([[0.1, 0.9]])},
        "detection": {"boxes": torch.cat([torch.from_numpy(net.boxes), torch.zeros(1, 4)])[None],
                      "scores": torch.tensor([[0.8, 0.0]]), "labels": torch.tensor([[2, -1]]),
                      "num": torch.tensor([1])},
        "segmentation": {"mask": mask},
    }
    (result,) = split_predictions(preds, [net.meta])
    np.testing.assert_allclose(result.class_scores, [0.1, 0.9])
    assert result.boxes.shape == (1, 4) and result.labels.tolist() == [2] and result.scores.tolist() == [pytest.approx(0.8)]
    np.testing.assert_allclose(result.boxes[0], box, atol=1.0)
    assert result.mask.shape == (h, w)
    np.testing.assert_allclose(mask_bbox(result.mask, 3), box, atol=1.0)
    assert (result.mask == original.mask).mean() > 0.97


def test_split_predictions_clips_boxes_to_original_image():
    meta = {"orig_size": (32, 16), "scale": 2.0}
    preds = {"detection": {"boxes": torch.tensor([[[-4.0, 10.0, 50.0, 70.0]]]), "scores": torch.tensor([[0.5]]),
                           "labels": torch.tensor([[0]]), "num": torch.tensor([1])}}
    (result,) = split_predictions(preds, [meta])
    np.testing.assert_allclose(result.boxes[0], [0.0, 5.0, 16.0, 32.0])


# --------------------------------------------------------------------------------------- collate

def test_collate_pads_boxes_and_marks_unlabelled_tasks_invalid():
    img = np.zeros((8, 8, 3), np.uint8)
    samples = [
        Sample(img, boxes=np.array([[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]], np.float32),
               labels=np.array([0, 1, 2]), mask=np.ones((8, 8), np.uint8), label=2),
        Sample(img, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64)),  # labelled, no objects
        Sample(img, boxes=np.array([[3, 3, 7, 7]], np.float32), labels=np.array([1]), label=0),
        Sample(img + 1, mask=np.zeros((8, 8), np.uint8)),  # detection-unlabelled
    ]
    batch = collate(samples, TASKS, num_cls_classes=3)
    assert batch.images.shape == (4, 3, 8, 8) and batch.images.dtype == torch.uint8
    assert (batch.images[3] == 1).all()
    det = batch.targets["detection"]
    assert det["boxes"].shape == (4, 3, 4) and det["labels"].shape == (4, 3)
    assert det["labels"].tolist() == [[0, 1, 2], [-1, -1, -1], [1, -1, -1], [-1, -1, -1]]
    assert det["valid"].tolist() == [True, True, True, False]
    torch.testing.assert_close(det["boxes"][2, 0], torch.tensor([3.0, 3.0, 7.0, 7.0]))
    seg = batch.targets["segmentation"]
    assert seg["valid"].tolist() == [True, False, False, True]
    assert (seg["mask"][1] == IGNORE_INDEX).all() and (seg["mask"][0] == 1).all()
    cls = batch.targets["classification"]
    assert cls["valid"].tolist() == [True, False, True, False]
    assert cls["labels"].tolist()[0] == 2 and cls["labels"].tolist()[2] == 0
    assert [m for m in batch.meta] == [{}, {}, {}, {}]


def test_collate_multi_label_and_task_subset():
    img = np.zeros((4, 4, 3), np.uint8)
    samples = [Sample(img, label=np.array([1, 0, 1], np.float32)), Sample(img)]
    batch = collate(samples, ["classification"], num_cls_classes=3, multi_label=True)
    assert set(batch.targets) == {"classification"}
    assert batch.targets["classification"]["labels"].tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    assert batch.targets["classification"]["valid"].tolist() == [True, False]


# -------------------------------------------------------------------------------- device augment

def _augment_batch(num: int = 3) -> Batch:
    g = np.random.default_rng(0)
    samples = []
    for i in range(num):
        image = g.integers(0, 255, (32, 48, 3), dtype=np.uint8)
        mask = np.zeros((32, 48), np.uint8)
        x1, y1 = 2 + 5 * i, 3 + 2 * i
        x2, y2 = x1 + 10 + i, y1 + 12
        mask[y1:y2, x1:x2] = i + 1
        boxes = np.array([[x1, y1, x2, y2]], np.float32)
        if i == 0:  # a second object so the other images get padding rows
            boxes = np.concatenate([boxes, np.array([[30, 20, 44, 30]], np.float32)])
            mask[20:30, 30:44] = 9
        samples.append(Sample(image, boxes=boxes, labels=np.arange(len(boxes)), mask=mask))
    return collate(samples, ["detection", "segmentation"])


def _no_jitter(hflip: float) -> AugmentConfig:
    return AugmentConfig(hflip=hflip, brightness=0.0, contrast=0.0)


def test_augment_without_flip_or_jitter_only_converts_to_float():
    batch = _augment_batch()
    out = DeviceAugment(_no_jitter(0.0))(batch)
    assert out.images.dtype == torch.float32
    torch.testing.assert_close(out.images, batch.images.float() / 255)
    assert torch.equal(out.targets["detection"]["boxes"], batch.targets["detection"]["boxes"])
    assert torch.equal(out.targets["segmentation"]["mask"], batch.targets["segmentation"]["mask"])


def test_hflip_moves_images_boxes_and_masks_together():
    batch = _augment_batch()
    out = DeviceAugment(_no_jitter(1.0))(batch)
    width = batch.images.shape[-1]
    torch.testing.assert_close(out.images, batch.images.flip(-1).float() / 255)
    assert torch.equal(out.targets["segmentation"]["mask"], batch.targets["segmentation"]["mask"].flip(-1))
    labels = batch.targets["detection"]["labels"]
    for b in range(len(batch)):
        mask = out.targets["segmentation"]["mask"][b].numpy()
        for j in range(labels.shape[1]):
            if labels[b, j] < 0:
                continue
            old = batch.targets["detection"]["boxes"][b, j]
            new = out.targets["detection"]["boxes"][b, j]
            torch.testing.assert_close(new, torch.stack([width - old[2], old[1], width - old[0], old[3]]))
            value = 9 if (b == 0 and j == 1) else b + 1
            assert mask_bbox(mask, value) == [round(float(v)) for v in new]
    assert torch.equal(out.targets["detection"]["labels"], labels)
    assert batch.images.dtype == torch.uint8  # the input batch is not modified


def test_random_flip_is_per_sample_and_consistent():
    torch.manual_seed(0)
    batch = collate([Sample(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8),
                            boxes=np.array([[1, 2, 6, 9]], np.float32), labels=np.array([0]),
                            mask=np.pad(np.ones((7, 5), np.uint8), ((2, 7), (1, 10))))
                     for i in range(16)], ["detection", "segmentation"])
    torch.manual_seed(3)
    out = DeviceAugment(_no_jitter(0.5))(batch)
    flipped = []
    for b in range(16):
        image_flipped = torch.allclose(out.images[b], batch.images[b].flip(-1).float() / 255, atol=1e-5)
        assert image_flipped or torch.allclose(out.images[b], batch.images[b].float() / 255, atol=1e-5)
        box = out.targets["detection"]["boxes"][b, 0].tolist()
        assert box == ([10.0, 2.0, 15.0, 9.0] if image_flipped else [1.0, 2.0, 6.0, 9.0])
        assert mask_bbox(out.targets["segmentation"]["mask"][b].numpy(), 1) == [round(v) for v in box]
        flipped.append(image_flipped)
    assert 0 < sum(flipped) < 16  # per-sample, not per-batch


def test_jitter_keeps_images_in_unit_range():
    batch = _augment_batch()
    torch.manual_seed(0)
    out = DeviceAugment(AugmentConfig(hflip=0.0, brightness=0.5, contrast=0.5))(batch)
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert not torch.equal(out.images, batch.images.float() / 255)
    assert torch.equal(out.targets["detection"]["boxes"], batch.targets["detection"]["boxes"])


def test_hflip_leaves_padding_rows_untouched():
    batch = _augment_batch()
    out = DeviceAugment(_no_jitter(1.0))(batch)
    padding = batch.targets["detection"]["labels"] < 0
    assert padding.any()
    assert torch.equal(out.targets["detection"]["boxes"][padding], batch.targets["detection"]["boxes"][padding])
