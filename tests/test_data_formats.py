"""Every dataset layout loads into the same Sample contract: one scene written as COCO, YOLO, mask
PNGs, CSV and ImageFolder reads back as the same boxes, labels and masks; COCO <-> YOLO converts
both ways; evaluation on a YOLO copy of a COCO val set scores the same."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import REPO_ROOT, one_line, run_tool
from data_scenes import (CATEGORIES, NAMES, SCENES, SEG_CLASSES, Scene, class_mask, write_coco, write_imagefolder,
                         write_images, write_label_csv, write_masks, write_yolo)
from vision_mtl.config import load_config
from vision_mtl.data.convert import coco_to_yolo, merge_polygons, yolo_to_coco
from vision_mtl.data.image_io import image_size, read_image
from vision_mtl.data.loader import build_data
from vision_mtl.data.sample import IGNORE_INDEX
from vision_mtl.evaluation.evaluator import Evaluator
from vision_mtl.errors import DataError

SIZE = 96  # letterbox size: every scene is scaled up, none exactly fits


def flow(*sources: dict) -> str:
    return yaml.safe_dump(list(sources), default_flow_style=True, width=10_000).strip()


def load(make_config, root: Path, *sources: dict, tasks: str = "detection, segmentation", extra: tuple = ()):
    """The val dataset of a config whose train and val are ``sources``, by image key."""
    cfg = make_config("data.synthetic=null", f"data.root={root}", f"data.image_size={SIZE}", f"model.tasks=[{tasks}]",
                      f"data.train={flow(*sources)}", f"data.val={flow(*sources)}", *extra)
    data = build_data(cfg, train=False)
    dataset = data.val.dataset
    return data, {dataset[i].meta["key"]: dataset[i] for i in range(len(dataset))}


@pytest.fixture
def scene_root(tmp_path) -> Path:
    write_images(tmp_path / "images")
    write_coco(tmp_path / "coco.json")
    write_yolo(tmp_path / "yolo")
    write_yolo(tmp_path / "yolo_boxes", polygons=False)
    write_masks(tmp_path / "masks")
    write_masks(tmp_path / "palette", palette=True)
    return tmp_path


COCO = {"format": "coco", "images": "images", "annotations": "coco.json"}
YOLO = {"format": "yolo", "annotations": "yolo/data.yaml"}
MASKS = {"format": "masks", "images": "images", "masks": "masks", "classes": SEG_CLASSES}


def test_same_scene_from_coco_yolo_and_mask_layouts(scene_root, make_config):
    coco_data, coco = load(make_config, scene_root, COCO)
    yolo_data, yolo = load(make_config, scene_root, YOLO)
    _, masks = load(make_config, scene_root, MASKS, tasks="segmentation")
    _, palette = load(make_config, scene_root, {**MASKS, "masks": "palette"}, tasks="segmentation")
    _, boxes = load(make_config, scene_root, {**YOLO, "annotations": "yolo_boxes/data.yaml"}, tasks="detection")

    assert coco_data.classes == yolo_data.classes == {"detection": NAMES, "segmentation": SEG_CLASSES}
    assert coco_data.category_ids == list(CATEGORIES)  # original COCO ids, for writing results
    assert yolo_data.category_ids == [1, 2, 3]  # YOLO: class id + 1
    assert set(coco) == set(yolo) == set(masks) == set(palette) == {s.key for s in SCENES}
    for scene in SCENES:
        key = scene.key
        expected_labels = [NAMES.index(CATEGORIES[cid]) for cid, _ in scene.objects]
        scale = SIZE / max(scene.size)
        expected_boxes = np.array([[min(p[0::2]), min(p[1::2]), max(p[0::2]), max(p[1::2])] for _, p in scene.objects],
                                  np.float32).reshape(-1, 4) * scale
        for sample in (coco[key], yolo[key], boxes[key]):
            assert sample.labels.tolist() == expected_labels
            np.testing.assert_allclose(sample.boxes, expected_boxes, atol=1e-3)
        for sample in (coco[key], yolo[key], masks[key], palette[key]):
            assert sample.mask.shape == (SIZE, SIZE) and sample.has >= {"segmentation"}
        np.testing.assert_array_equal(masks[key].mask, palette[key].mask)
        content = masks[key].mask != IGNORE_INDEX
        assert content.sum() == round(scene.size[0] * scale) * round(scene.size[1] * scale)
        assert (coco[key].mask == yolo[key].mask).mean() > 0.995  # both pycocotools; YOLO rounds to 1e-6
        assert (coco[key].mask[content] == masks[key].mask[content]).mean() > 0.97  # two rasterisers, edges differ
        assert set(np.unique(coco[key].mask[content])) == {0, *(n + 1 for n in expected_labels)}
        assert "segmentation" not in boxes[key].has  # box-only YOLO files hold no masks


def test_masks_class_map_merges_remaps_and_ignores_values(scene_root, make_config):
    merged = {**MASKS, "classes": None, "class_map": {0: "background", 1: "shape", 2: "shape"}}  # bar (3) unmapped
    data, samples = load(make_config, scene_root, merged, tasks="segmentation")
    assert data.classes["segmentation"] == ["background", "shape"]
    for scene in SCENES:
        raw = class_mask(scene)
        original = data.val.dataset.original_mask(next(i for i, r in enumerate(data.val.dataset.records)
                                                       if r.key == scene.key))
        np.testing.assert_array_equal(original, np.select([raw == 0, raw <= 2], [0, 1], IGNORE_INDEX))
        assert set(np.unique(samples[scene.key].mask)) <= {0, 1, IGNORE_INDEX}


def test_unknown_mask_values_become_ignore_with_one_warning(scene_root, make_config, caplog):
    two_classes = {**MASKS, "classes": ["background", "square"]}  # values 2, 3 are not named
    data, samples = load(make_config, scene_root, two_classes, tasks="segmentation")
    a = samples["a.png"].mask
    assert (a == IGNORE_INDEX).any() and set(np.unique(a)) <= {0, 1, IGNORE_INDEX}
    dataset = data.val.dataset
    for i in range(len(dataset)):
        dataset[i]  # a second pass reports nothing new
    warned = [r for r in caplog.records if "unknown class" in r.getMessage()]
    assert len(warned) == 3  # a, b, sub/c hold a triangle or a bar; d has none
    assert dataset.problem_counts()["unknown class"] == 3


def test_csv_imagefolder_and_coco_classification_agree(scene_root, make_config):
    write_label_csv(scene_root / "labels.csv", {s.key: s.label for s in SCENES})
    write_imagefolder(scene_root / "folders")
    csv_data, by_csv = load(make_config, scene_root, {"format": "csv", "images": "images", "labels": "labels.csv"},
                            tasks="classification")
    folder_data, by_folder = load(make_config, scene_root, {"format": "imagefolder", "images": "folders"},
                                  tasks="classification")
    assert csv_data.classes == folder_data.classes == {"classification": ["indoor", "outdoor"]}
    for scene in SCENES:
        index = ["indoor", "outdoor"].index(scene.label)
        assert by_csv[scene.key].label == index
        assert by_folder[f"{scene.label}/{Path(scene.key).name}"].label == index

    # multi-label from the categories present (COCO) equals the same written as "a;b" in a CSV
    present = {s.key: ";".join(CATEGORIES[c] for c in sorted({c for c, _ in s.objects})) for s in SCENES}
    write_label_csv(scene_root / "present.csv", present)
    multi = ("model.classification.multi_label=true",)
    _, by_coco = load(make_config, scene_root, COCO, tasks="classification", extra=multi)
    csv_source = {"format": "csv", "images": "images", "labels": "present.csv", "classes": NAMES}
    _, by_multi_csv = load(make_config, scene_root, csv_source, tasks="classification", extra=multi)
    for scene in SCENES:
        expected = np.zeros(3, np.float32)
        expected[[NAMES.index(CATEGORIES[c]) for c, _ in scene.objects]] = 1
        np.testing.assert_array_equal(by_coco[scene.key].label, expected)
        np.testing.assert_array_equal(by_multi_csv[scene.key].label, expected)


def test_coco_image_field_and_yolo_image_list(scene_root, make_config):
    """A COCO image-level field as the classification target; a YOLO split given as a txt list of
    images (relative to the list) under a data.yaml whose ``path`` is relative to the yaml."""
    coco = json.loads((scene_root / "coco.json").read_text())
    for img, scene in zip(coco["images"], SCENES):
        img["scene"] = scene.label
    (scene_root / "scene.json").write_text(json.dumps(coco))
    data, samples = load(make_config, scene_root, {**COCO, "annotations": "scene.json", "label_field": "scene"},
                         tasks="classification")
    assert data.classes["classification"] == ["indoor", "outdoor"]
    assert [samples[s.key].label for s in SCENES] == [0, 1, 0, 1]

    (scene_root / "yolo" / "lists").mkdir()
    (scene_root / "yolo" / "lists" / "some.txt").write_text("../images/train/b.png\n../images/train/sub/c.png\n")
    spec = yaml.safe_load((scene_root / "yolo" / "data.yaml").read_text())
    spec.update({"path": "..", "val": "lists/some.txt"})
    (scene_root / "yolo" / "lists" / "data.yaml").write_text(yaml.safe_dump(spec))
    _, listed = load(make_config, scene_root, {"format": "yolo", "annotations": "yolo/lists/data.yaml", "split": "val"})
    _, whole = load(make_config, scene_root, YOLO)
    assert set(listed) == {"images/train/b.png", "images/train/sub/c.png"}  # keys: relative to `path`
    for key in ("b.png", "sub/c.png"):
        np.testing.assert_array_equal(listed[f"images/train/{key}"].boxes, whole[key].boxes)


def test_coco_classes_present_need_multi_label(scene_root, make_config):
    with pytest.raises(DataError) as info:
        load(make_config, scene_root, {**COCO, "tasks": ["classification"]}, tasks="classification")
    assert one_line(info.value) and "multi_label" in str(info.value) and "data.train[0] (coco)" in str(info.value)


def test_coco_crowd_regions_are_ignore_in_masks_and_kept_for_cocoeval(tmp_path, make_config):
    write_images(tmp_path / "images")
    crowd = [44, 30, 62, 30, 62, 46, 44, 46]  # over a's background, clear of its objects
    write_coco(tmp_path / "coco.json", crowd={"a.png": crowd})
    data, samples = load(make_config, tmp_path, COCO)
    a = samples["a.png"]
    assert len(a.boxes) == 2  # the crowd region is no detection target
    scale = SIZE / 64
    assert (a.mask[int(32 * scale):int(44 * scale), int(46 * scale):int(60 * scale)] == IGNORE_INDEX).all()
    gt = data.val.dataset.detection_ground_truth().coco
    crowds = [ann for ann in gt["annotations"] if ann["iscrowd"]]
    assert len(crowds) == 1 and crowds[0]["category_id"] == 3
    assert {img["id"] for img in gt["images"]} == {100, 101, 102, 103}  # the file's own image ids


def test_coco_to_yolo_to_coco_round_trip(tmp_path):
    scenes = [*SCENES, Scene("e.png", (50, 60), "indoor",
                             [(3, [2, 2, 12, 2, 12, 12, 2, 12]), (11, [30, 30, 50, 30, 50, 44, 30, 44])])]
    write_images(tmp_path / "images", scenes)
    coco = json.loads(write_coco(tmp_path / "coco.json", scenes, crowd={"b.png": [2, 20, 38, 20, 38, 34, 2, 34]})
                      .read_text())
    # e.png: one object made of two polygons (COCO allows that, YOLO-seg does not)
    e = next(img["id"] for img in coco["images"] if img["file_name"] == "e.png")
    parts = [a for a in coco["annotations"] if a["image_id"] == e]
    parts[0]["segmentation"] = [p["segmentation"][0] for p in parts]
    parts[0]["bbox"], parts[0]["area"] = [2, 2, 48, 42], parts[0]["area"] + parts[1]["area"]
    coco["annotations"].remove(parts[1])
    (tmp_path / "coco.json").write_text(json.dumps(coco))

    counts = coco_to_yolo(tmp_path / "coco.json", tmp_path / "images", tmp_path / "yolo", split="val")
    assert counts["images"] == len(scenes) and counts["crowd regions (left out)"] == 1
    spec = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert spec["names"] == NAMES and spec["coco_category_ids"] == list(CATEGORIES)
    assert (tmp_path / "yolo" / "labels" / "val" / "sub" / "c.txt").is_file()
    yolo_to_coco(tmp_path / "yolo" / "data.yaml", "val", tmp_path / "back.json")
    back = json.loads((tmp_path / "back.json").read_text())

    assert back["categories"] == [{"id": cid, "name": name} for cid, name in CATEGORIES.items()]
    assert sorted((i["file_name"], i["height"], i["width"]) for i in back["images"]) == \
        sorted((i["file_name"], i["height"], i["width"]) for i in coco["images"])
    original = _objects(coco, with_crowd=False)
    returned = _objects(back, with_crowd=True)
    assert original.keys() == returned.keys()
    for name, objects in original.items():
        assert [o[0] for o in objects] == [o[0] for o in returned[name]]
        for (_, bbox, mask), (_, bbox_back, mask_back) in zip(objects, returned[name]):
            np.testing.assert_allclose(bbox_back, bbox, atol=1e-3)
            assert (mask & mask_back).sum() / (mask | mask_back).sum() > 0.97


def _objects(coco: dict, with_crowd: bool) -> dict[str, list]:
    """Per file name: (category id, bbox, rasterised mask) of each object, in annotation order."""
    images = {img["id"]: img for img in coco["images"]}
    out = {img["file_name"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann["iscrowd"] and not with_crowd:
            continue
        img = images[ann["image_id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], img["height"], img["width"]))
        out[img["file_name"]].append((ann["category_id"], ann["bbox"], mask_utils.decode(rle).astype(bool)))
    return out


def test_merge_polygons_keeps_each_part_and_adds_no_area():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    parts = [square, square + 20]
    merged = merge_polygons(parts)
    area = mask_utils.area(mask_utils.frPyObjects([merged.reshape(-1).tolist()], 40, 40))[0]
    flat = [p.reshape(-1).tolist() for p in parts]
    separate = mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(flat, 40, 40)))
    assert abs(int(area) - int(separate)) <= 2


def test_convert_tool_both_ways(tmp_path):
    write_images(tmp_path / "images")
    write_coco(tmp_path / "coco.json")
    proc = run_tool("convert_dataset.py", "--from", "coco", "--to", "yolo", "--annotations",
                    str(tmp_path / "coco.json"), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "yolo"))
    assert proc.returncode == 0, proc.stderr
    assert "4 images" in proc.stderr
    proc = run_tool("convert_dataset.py", "--from", "yolo", "--to", "coco", "--data",
                    str(tmp_path / "yolo" / "data.yaml"), "--out", str(tmp_path / "back.json"))
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "back.json").read_text())["annotations"]) == 6
    proc = run_tool("convert_dataset.py", "--from", "coco", "--to", "yolo", "--annotations", str(tmp_path / "no.json"),
                    "--images", str(tmp_path / "images"), "--out", str(tmp_path / "y2"))
    assert proc.returncode == 2 and one_line(proc.stderr) and "no.json" in proc.stderr


class OracleRunner:
    """Predicts, for images it has seen, that image's ground truth slightly perturbed: boxes jittered,
    a false positive, a mask with one class changed. Keyed by the image bytes, so it answers the
    same whichever dataset layout the image came from."""

    tasks = ["detection", "segmentation"]

    def __init__(self, loader):
        self.answers = {}
        rng = np.random.default_rng(0)
        for batch in loader:
            for i in range(len(batch)):
                det = batch.targets["detection"]
                keep = det["labels"][i] >= 0
                boxes = det["boxes"][i][keep] + torch.from_numpy(rng.normal(0, 1.5, (int(keep.sum()), 4))).float()
                boxes = torch.cat([boxes, torch.tensor([[5.0, 5.0, 30.0, 30.0]])])
                labels = torch.cat([det["labels"][i][keep], torch.tensor([0])])
                mask = batch.targets["segmentation"]["mask"][i].clone()
                mask[mask == 2] = 1
                self.answers[self._key(batch.images[i])] = (boxes, labels, mask.clamp(max=3))

    @staticmethod
    def _key(image: torch.Tensor) -> str:
        return hashlib.sha1(image.numpy().tobytes()).hexdigest()

    def __call__(self, images: torch.Tensor):
        answers = [self.answers[self._key(image)] for image in images]
        most = max(len(a[1]) for a in answers)
        boxes, scores = torch.zeros(len(images), most, 4), torch.zeros(len(images), most)
        labels = torch.full((len(images), most), -1)
        for i, (b, lab, _) in enumerate(answers):
            boxes[i, : len(lab)], labels[i, : len(lab)] = b, lab
            scores[i, : len(lab)] = torch.linspace(0.9, 0.3, len(lab))
        num = torch.tensor([len(a[1]) for a in answers])
        return {"detection": {"boxes": boxes, "scores": scores, "labels": labels, "num": num},
                "segmentation": {"mask": torch.stack([a[2] for a in answers])}}


def test_yolo_copy_of_a_coco_val_set_scores_the_same(scene_root, make_config):
    coco_to_yolo(scene_root / "coco.json", scene_root / "images", scene_root / "converted", split="val")
    coco_data, _ = load(make_config, scene_root, COCO)
    converted = {"format": "yolo", "annotations": "converted/data.yaml", "split": "val"}
    yolo_data, _ = load(make_config, scene_root, converted)
    assert yolo_data.category_ids == coco_data.category_ids == list(CATEGORIES)  # kept by the converter
    runner = OracleRunner(coco_data.val)
    scores = [Evaluator(data.val, data.classes).run(runner, show_progress=False).metrics
              for data in (coco_data, yolo_data)]
    assert 0.3 < scores[0]["detection/mAP"] < 0.95 and 0.3 < scores[0]["segmentation/mIoU"] < 0.95
    assert scores[0].keys() == scores[1].keys()
    for key, value in scores[0].items():
        assert scores[1][key] == pytest.approx(value, abs=1e-6), key


# ----------------------------------------------------------------------------- image decoding

def _save_variants(folder: Path) -> dict[str, np.ndarray]:
    """The same 8x12 picture as gray, RGBA, CMYK, 16-bit and EXIF-rotated files; returns RGB expectations."""
    gray = np.tile(np.arange(12, dtype=np.uint8) * 20, (8, 1))
    rgb = np.stack([gray, 255 - gray, np.full_like(gray, 90)], axis=-1)
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=100)
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer turns it 90 degrees clockwise
    Image.fromarray(np.rot90(rgb, 1).copy()).save(folder / "rotated.jpg", exif=exif, quality=100)
    gray3 = np.repeat(gray[..., None], 3, axis=-1)
    return {"gray.png": gray3, "rgba.png": rgb, "cmyk.jpg": rgb, "deep.png": gray3, "rotated.jpg": rgb}


def test_image_modes_and_exif_orientation_are_normalised(tmp_path):
    for name, expected in _save_variants(tmp_path).items():
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (8, 12, 3), name
        assert image_size(tmp_path / name) == (8, 12), name  # the rotated file is stored 12 x 8
        error = np.abs(image.astype(int) - expected)
        assert (error.mean() < 3 if name.endswith(".jpg") else error.max() == 0), name  # JPEG is lossy


# ----------------------------------------------------------------------------------- coco128

COCO128 = REPO_ROOT.parent / "shared" / "datasets" / "coco128"


@pytest.mark.skipif(not COCO128.is_dir(), reason=f"coco128 not found at {COCO128}")
def test_coco128_config_reads_all_three_tasks():
    cfg = load_config(REPO_ROOT / "configs" / "coco128.yaml", ["data.num_workers=0", "data.image_size=128"])
    data = build_data(cfg, train=False)
    dataset = data.val.dataset
    raw = json.loads((COCO128 / "annotations" / "instances.json").read_text())
    assert len(dataset) == 128
    assert len(data.classes["detection"]) == 80 and data.classes["segmentation"][0] == "background"
    assert data.category_ids == sorted(c["id"] for c in raw["categories"]) and data.category_ids[-1] == 90
    gt = dataset.detection_ground_truth().coco
    assert len(gt["annotations"]) == len(raw["annotations"]) == 939
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 10
    crowd_image = next(a["image_id"] for a in raw["annotations"] if a["iscrowd"])
    index = next(i for i, r in enumerate(dataset.records) if r.image_id == crowd_image)
    sample = dataset[index]
    assert (sample.mask == IGNORE_INDEX).any() and sample.label.shape == (80,)
    present = {a["category_id"] for a in raw["annotations"] if a["image_id"] == crowd_image}
    assert set(np.flatnonzero(sample.label)) == {data.category_ids.index(c) for c in present}
