"""Bad files never stop or silently corrupt a run: each is repaired or skipped, reported once, counted.

One corpus holds every kind of problem across a COCO, a YOLO and a mask-folder source; loading it
for two epochs must finish, warn once per bad file, keep every good sample, and leave the repaired
labels right.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import one_line, run_tool
from vision_mtl.data.loader import build_data
from vision_mtl.data.sample import IGNORE_INDEX

H, W = 32, 48


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def _annotation(image_id: int, category: int, bbox: list[float], segmentation=None) -> dict:
    x, y, w, h = bbox
    return {"image_id": image_id, "category_id": category, "bbox": bbox, "area": max(w * h, 0.0), "iscrowd": 0,
            "segmentation": segmentation if segmentation is not None else [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def write_corpus(root: Path) -> dict[str, set[str]]:
    """The corpus; returns the bad files (by the name their warning shows) and the good image keys."""
    coco_images = root / "coco" / "images"
    for i in range(6):
        _jpeg(coco_images / f"g{i}.jpg", i)
    truncated = _jpeg(coco_images / "truncated.jpg", 10, (64, 64))
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) // 2])
    (coco_images / "garbage.jpg").write_bytes(b"this is not an image" * 10)
    names = ["g0", "g1", "g2", "g3", "g4", "g5", "truncated", "garbage", "missing"]
    images = [{"id": i + 1, "file_name": f"{n}.jpg", "height": H, "width": W} for i, n in enumerate(names)]
    images[5]["height"], images[5]["width"] = 40, 40  # g5: annotated at another size than the file
    images[6]["height"] = images[6]["width"] = 64
    annotations = [
        _annotation(1, 1, [2, 2, 10, 10]),
        _annotation(2, 2, [30, 20, 30, 20]),  # g1: runs 12 px past the right edge, 8 px below: clipped
        _annotation(2, 1, [4, 4, 8, 8]),
        _annotation(3, 1, [5, 5, 0, 9]),  # g2: zero width: dropped
        _annotation(4, 2, [6, 6, 12, 12], segmentation=[[6, 6, 18, 18]]),  # g3: a 2-point polygon: dropped
        _annotation(5, 99, [1, 1, 5, 5]),  # g4: unknown category: dropped
        _annotation(5, 1, [10, 10, 8, 8]),
        _annotation(6, 1, [3, 3, 6, 6]),
    ]
    for i, ann in enumerate(annotations, start=1):
        ann["id"] = i
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    (root / "coco" / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                              "categories": categories}))

    yolo = root / "yolo"
    label_lines = {
        "y0": ["0 0.5 0.5 0.25 0.25", "1 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5"],  # good box + good polygon
        "y1": ["0 0.5 0.5 0.2 0.2", "abc def"],  # malformed line
        "y2": ["9 0.5 0.5 0.2 0.2", "1 0.3 0.3 0.2 0.2"],  # unknown class 9
        "y3": ["0 0.5 0.5", "1 0.5 0.5 0.2 0.2"],  # a 1-point polygon
        "y4": ["0 0.95 0.5 0.3 0.3"],  # out of bounds on the right: clipped
        "y5": ["1 0.5 0.5 0 0.2", "0 0.2 0.2 0.1 0.1"],  # zero width: dropped
    }
    for i, (name, lines) in enumerate(label_lines.items()):
        _jpeg(yolo / "images" / "train" / f"{name}.jpg", 20 + i)
        label = yolo / "labels" / "train" / f"{name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + "\n")
    _jpeg(yolo / "images" / "train" / "nolabel.jpg", 30)  # no label file
    (yolo / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/train",
                                                    "names": ["a", "b"]}))

    masks_root = root / "masks"
    for i, name in enumerate(["m0", "m1", "nomask", "wrongsize", "corrupt"]):
        _jpeg(masks_root / "images" / f"{name}.jpg", 40 + i)
    (masks_root / "masks").mkdir()
    for name, size in (("m0", (H, W)), ("m1", (H, W)), ("wrongsize", (H + 8, W))):
        mask = np.zeros(size, np.uint8)
        mask[4:12, 4:20] = 1
        Image.fromarray(mask).save(masks_root / "masks" / f"{name}.png")
    (masks_root / "masks" / "corrupt.png").write_bytes(b"\x89PNG broken")
    (masks_root / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG after all")  # its mask is fine
    Image.fromarray(np.zeros((H, W), np.uint8)).save(masks_root / "masks" / "broken.png")

    bad = {
        "garbage.jpg": "unreadable image", "truncated.jpg": "unreadable image", "missing.jpg": "missing image",
        "instances.json (g1.jpg)": "box out of bounds", "instances.json (g2.jpg)": "degenerate box",
        "instances.json (g3.jpg)": "polygon with < 3 points", "instances.json (g4.jpg)": "unknown class",
        "g5.jpg": "annotated size differs from image",
        "y1.txt": "malformed label", "y2.txt": "unknown class", "y3.txt": "polygon with < 3 points",
        "y4.txt": "box out of bounds", "y5.txt": "degenerate box", "nolabel.txt": "missing label file",
        "nomask.jpg": "missing label file", "wrongsize.png": "mask size differs from image",
        "corrupt.png": "unreadable mask", "broken.jpg": "unreadable image",
    }
    good = {f"g{i}.jpg" for i in range(6)} | {f"y{i}.jpg" for i in range(6)} | {"nolabel.jpg"} | \
        {f"{n}.jpg" for n in ("m0", "m1", "nomask", "wrongsize", "corrupt")}
    return {"bad": bad, "good": good}


SOURCES = ("[{format: coco, images: coco/images, annotations: coco/instances.json},"
           " {format: yolo, annotations: yolo/data.yaml},"
           " {format: masks, images: masks/images, masks: masks/masks, classes: [background, a, b]}]")


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, dict]:
    return tmp_path, write_corpus(tmp_path)


def corpus_overrides(root: Path) -> list[str]:
    return ["data.synthetic=null", f"data.root={root}", "model.tasks=[detection, segmentation]", "data.image_size=64",
            f"data.train={SOURCES}", f"data.val={SOURCES}", "train.batch_size=4"]


def test_bad_files_are_reported_once_and_good_samples_all_load(corpus, make_config, caplog):
    root, expected = corpus
    caplog.set_level(logging.WARNING, logger="vision_mtl.data")
    data = build_data(make_config(*corpus_overrides(root)), train=False)
    dataset = data.val.dataset
    loaded = []
    for _ in range(2):  # a second epoch reports nothing again
        for batch in data.val:
            loaded += [(m["key"], m.get("skipped", False), batch.targets, i) for i, m in enumerate(batch.meta)]

    messages = [r.getMessage() for r in caplog.records]
    for name, kind in expected["bad"].items():
        lines = [m for m in messages if name in m]
        assert len(lines) == 1 and kind in lines[0], (name, kind, lines)
    summary = [m for m in messages if "file(s) with problems" in m]
    assert len(summary) == 1 and "missing image" in summary[0]

    # every good image is a sample, exactly once per epoch; unreadable ones are blank and labelled for nothing
    first_epoch = loaded[: len(dataset)]
    kept = sorted(Path(key).name for key, skipped, _, _ in first_epoch if not skipped)
    assert kept == sorted(expected["good"])
    for key, skipped, targets, i in first_epoch:
        if skipped:
            assert Path(key).name in {"garbage.jpg", "truncated.jpg", "broken.jpg"}
            assert not any(targets[t]["valid"][i] for t in targets)
    assert dataset.problem_counts() == {
        "unreadable image": 3, "missing image": 1, "box out of bounds": 2, "degenerate box": 2,
        "polygon with < 3 points": 2, "unknown class": 2, "annotated size differs from image": 1,
        "malformed label": 1, "missing label file": 2, "mask size differs from image": 1, "unreadable mask": 1}


def test_repaired_labels_are_right(corpus, make_config):
    root, _ = corpus
    data = build_data(make_config(*corpus_overrides(root)), train=False)
    dataset = data.val.dataset
    by_name = {Path(r.key).name: i for i, r in enumerate(dataset.records)}
    scale = 64 / W

    def sample(name):
        return dataset[by_name[name]]

    np.testing.assert_allclose(sample("g1.jpg").boxes, np.array([[30, 20, 48, 32], [4, 4, 12, 12]]) * scale)
    assert len(sample("g2.jpg").boxes) == 0 and "detection" in sample("g2.jpg").has  # labelled: nothing left
    assert sample("g4.jpg").labels.tolist() == [0]
    g3 = sample("g3.jpg")  # its box stays; the object has no usable polygon, so its box is ignore in the mask
    inner = slice(round(7 * scale), round(17 * scale))
    assert len(g3.boxes) == 1 and (g3.mask[inner, inner] == IGNORE_INDEX).all()
    assert sample("g5.jpg").boxes is None and "detection" not in dataset.labelled_for(by_name["g5.jpg"])
    y4 = np.array([[(0.95 - 0.15) * W, 0.35 * H, W, 0.65 * H]]) * scale  # right edge clipped at the image's
    np.testing.assert_allclose(sample("y4.jpg").boxes, y4, atol=1e-3)
    assert sample("y2.jpg").labels.tolist() == [1] and sample("y3.jpg").labels.tolist() == [1]
    assert sample("nolabel.jpg").has == set() and sample("nomask.jpg").has == set()
    assert sample("wrongsize.jpg").mask is None and sample("corrupt.jpg").mask is None
    assert dataset.original_mask(by_name["m0.jpg"]).shape == (H, W)


def test_workers_report_each_load_problem_once_across_epochs(corpus, make_config, tmp_path):
    """Load-time problems met in DataLoader workers are flagged in shared memory: one line per file
    although shuffling hands the file to another worker each epoch, and the main process (which
    evaluation runs in) sees the flags."""
    root, _ = corpus
    log_file = tmp_path / "warnings.log"
    handler = logging.FileHandler(log_file)
    logger = logging.getLogger("vision_mtl.data.problems")
    logger.addHandler(handler)
    try:
        data = build_data(make_config(*corpus_overrides(root), "data.num_workers=2", "train.batch_size=2"))
        for epoch in range(4):  # as the trainer does: a new order each epoch
            data.train.sampler.set_epoch(epoch)
            for _ in data.train:
                pass
        dataset = data.train.dataset
        del data
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = log_file.read_text().splitlines()
    for name in ("garbage.jpg", "truncated.jpg", "broken.jpg", "wrongsize.png", "corrupt.png", "g5.jpg"):
        assert sum(name in line for line in lines) == 1, (name, lines)
    index = {Path(r.key).name: i for i, r in enumerate(dataset.records)}
    assert dataset.labelled_for(index["garbage.jpg"]) == set()
    assert dataset.labelled_for(index["wrongsize.jpg"]) == set()
    assert dataset.problem_counts()["unreadable image"] == 3


def test_check_dataset_tool_prints_the_report(corpus, tmp_path):
    root, _ = corpus
    config = tmp_path / "corpus.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"tasks": ["detection", "segmentation"]},
        "data": {"root": str(root), "synthetic": None, "image_size": 64, "num_workers": 0,
                 "train": yaml.safe_load(SOURCES), "val": yaml.safe_load(SOURCES)}}))
    proc = run_tool("check_dataset.py", "--config", str(config), "--decode", "--split", "val")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "data.val: 21 images" in out  # missing.jpg is not one
    # detection: g0-g4 and y0-y5 (unreadable images, g5's size mismatch and nolabel.jpg are not labelled)
    assert "data.val[1] (yolo)" in out and "labelled: detection 11, segmentation 13" in out
    assert "unreadable image" in out and "mask size differs from image" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("a "))
    assert row.split()[1:4] == ["7", "/", "7"]  # class a: images / boxes over the COCO and YOLO sources
    undecoded = run_tool("check_dataset.py", "--config", str(config), "--split", "val")  # reads mask files only
    assert undecoded.returncode == 0 and "not decoded" in undecoded.stdout and "broken.jpg" in undecoded.stderr
    missing = run_tool("check_dataset.py", "--config", str(config), "data.root=/nowhere/at/all")
    assert missing.returncode == 2 and one_line(missing.stderr) and "/nowhere/at/all" in missing.stderr


def test_training_on_bad_files_finishes_and_sums_up_load_problems(corpus, make_config, caplog):
    """A run over the corpus finishes its epoch, and after it one summary line per split counts the
    problems only decoding revealed."""
    from vision_mtl.training.trainer import Trainer

    root, _ = corpus
    caplog.set_level(logging.WARNING)
    cfg = make_config(*corpus_overrides(root), "train.epochs=1", "train.max_steps_per_epoch=null")
    metrics = Trainer(cfg).fit()
    assert metrics["epoch"] == 1
    summaries = [r.getMessage() for r in caplog.records if "with load problems so far" in r.getMessage()]
    assert len(summaries) == 2 and all("unreadable image (image skipped)" in s for s in summaries)
