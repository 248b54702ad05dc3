"""A user's data is never lost and a user's mistake is one line: the synthetic generator replaces only
folders it wrote, evaluation writes no data, sizes are checked, YAML errors name the place, label
problems are reported, a training split with nothing to learn stops, label CSVs use common headers."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import SHAPES_CLASSES, TINY_MODEL, one_line, run_tool
from data_scenes import SCENES, write_coco, write_images, write_yolo
from test_tools import assert_user_error
from vision_mtl.config import load_config
from vision_mtl.data import problems as kinds
from vision_mtl.data.convert import coco_to_yolo
from vision_mtl.data.loader import build_data
from vision_mtl.data.shapes import MARKER, ensure_shapes
from vision_mtl.errors import ConfigError, DataError


def flow(*sources: dict) -> str:
    return yaml.safe_dump(list(sources), default_flow_style=True, width=10_000).strip()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def users_folder(tmp_path) -> Path:
    """A dataset of the user's own that happens to hold a meta.json."""
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"my photo")
    (root / "meta.json").write_text('{"owner": "me"}')
    return root


# ------------------------------------------------------------ 1. the generator replaces only its own folders

def test_generator_refuses_a_folder_without_its_marker(users_folder):
    before = snapshot(users_folder)
    with pytest.raises(DataError) as info:
        ensure_shapes(users_folder, num_train=2, num_val=1, image_size=64)
    assert one_line(info.value) and str(users_folder) in str(info.value) and MARKER in str(info.value)
    assert "data.synthetic=null" in str(info.value)
    assert snapshot(users_folder) == before


def test_generator_marks_its_folder_and_fills_an_empty_one(tmp_path):
    (tmp_path / "empty").mkdir()
    root = ensure_shapes(tmp_path / "empty", num_train=2, num_val=1, image_size=64)
    meta = json.loads((root / MARKER).read_text())
    assert meta["generator"] == "vision_mtl.shapes" and meta["num_train"] == 2
    ensure_shapes(root, num_train=3, num_val=1, image_size=64)  # its own folder: replaced
    assert len(list((root / "train" / "images").iterdir())) == 3


def test_train_tool_over_a_users_folder_leaves_it_alone(users_folder, tmp_path):
    """`tools/train.py data.root=/my/dataset` (the shapes config by default) refuses, in one line."""
    before = snapshot(users_folder)
    proc = run_tool("train.py", f"data.root={users_folder}", *TINY_MODEL, "data.image_size=64",
                    "data.synthetic_train_images=4", "data.synthetic_val_images=2", "train.epochs=1",
                    "train.max_steps_per_epoch=1", "train.batch_size=2", "data.num_workers=0", "train.device=cpu",
                    f"run.dir={tmp_path / 'runs'}")
    assert_user_error(proc, str(users_folder), MARKER)
    assert snapshot(users_folder) == before


# ------------------------------------------------------------ 2. evaluation never writes a dataset

def test_evaluation_at_another_size_reads_the_data_as_it_is(shapes_root, tmp_path, make_config):
    root = tmp_path / "shapes"
    shutil.copytree(shapes_root, root)
    before = snapshot(root)
    cfg = make_config("data.synthetic=shapes", f"data.root={root}", "data.image_size=96")
    batch = next(iter(build_data(cfg, classes=SHAPES_CLASSES, train=False).val))
    assert batch.images.shape[-1] == 96
    assert snapshot(root) == before


def test_evaluation_without_its_data_says_so(tmp_path, make_config):
    missing = tmp_path / "nowhere"
    cfg = make_config("data.synthetic=shapes", f"data.root={missing}")
    with pytest.raises(DataError) as info:
        build_data(cfg, classes=SHAPES_CLASSES, train=False)
    assert one_line(info.value) and str(missing) in str(info.value) and "training" in str(info.value)
    assert not missing.exists()


def test_evaluate_tool_with_another_image_size_keeps_the_dataset(trained_run, shapes_root, tmp_path):
    """`tools/evaluate.py --weights best.pt data.image_size=96` evaluates, and writes no data."""
    root = tmp_path / "shapes"
    shutil.copytree(shapes_root, root)
    before = snapshot(root)
    proc = run_tool("evaluate.py", "--weights", str(trained_run / "best.pt"), f"data.root={root}",
                    "data.image_size=96", "--out", str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(root) == before


# ------------------------------------------------------------ 3. sizes and counts

@pytest.mark.parametrize("override, key", [
    ("data.image_size=0", "data.image_size"),
    ("data.image_size=-32", "data.image_size"),
    ("data.synthetic_train_images=0", "data.synthetic_train_images"),
    ("data.synthetic_val_images=-1", "data.synthetic_val_images"),
    ("data.num_workers=-1", "data.num_workers"),
    ("model.neck_channels=0", "model.neck_channels"),
    ("model.segmentation.channels=0", "model.segmentation.channels"),
    ("model.detection.max_detections=0", "model.detection.max_detections"),
    ("model.detection.pre_nms_topk=0", "model.detection.pre_nms_topk"),
    ("train.max_steps_per_epoch=0", "train.max_steps_per_epoch"),
])
def test_sizes_and_counts_must_be_positive(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert one_line(info.value) and str(info.value).startswith(f"{key}=")


# ------------------------------------------------------------ 4. YAML syntax errors

def test_yaml_syntax_error_in_a_config_file_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  tasks: [detection\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert one_line(message) and str(path) in message
    assert "line 3, column 6" in message and "expected ',' or ']'" in message


@pytest.mark.parametrize("override, needle", [
    ("model.tasks=[detection", "column 23"),
    ("data.root=@home", "cannot start any token"),
])
def test_yaml_syntax_error_in_an_override_names_it(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert one_line(info.value) and f"override '{override}'" in str(info.value) and needle in str(info.value)


def test_train_tool_yaml_error_is_one_line(tmp_path):
    assert_user_error(run_tool("train.py", "model.tasks=[detection", f"run.dir={tmp_path}"), "model.tasks=[detection")


# ------------------------------------------------------------ 5. COCO annotations of unknown images

def test_coco_annotation_of_an_unlisted_image_is_reported(tmp_path, make_config, caplog):
    write_images(tmp_path / "images")
    coco_path = write_coco(tmp_path / "coco.json")
    coco = json.loads(coco_path.read_text())
    stray = {**coco["annotations"][0], "id": 999, "image_id": 12345}
    coco["annotations"] += [stray, {**stray, "id": 1000}]
    coco_path.write_text(json.dumps(coco))
    source = {"format": "coco", "images": "images", "annotations": "coco.json"}
    cfg = make_config(f"data.root={tmp_path}", "model.tasks=[detection]", f"data.train={flow(source)}",
                      f"data.val={flow(source)}")
    caplog.set_level(logging.WARNING, logger="vision_mtl.data")
    data = build_data(cfg, train=False)
    assert data.val.dataset.problem_counts()[kinds.UNLISTED_IMAGE] == 2
    assert any(str(coco_path) in r.getMessage() and "2 annotation of an image not in 'images' (dropped)"
               in r.getMessage() for r in caplog.records)


def _read_as_val(make_config, caplog, root, source: dict, tasks: str):
    """The val dataset of ``source`` under ``root`` (warnings captured) and the tasks each image is labelled for."""
    cfg = make_config(f"data.root={root}", f"model.tasks=[{tasks}]", f"data.train={flow(source)}",
                      f"data.val={flow(source)}")
    caplog.set_level(logging.WARNING, logger="vision_mtl.data")
    dataset = build_data(cfg, train=False).val.dataset
    return dataset, {record.key: dataset.labelled_for(i) for i, record in enumerate(dataset.records)}


def test_coco_image_id_shared_by_two_images_leaves_both_unlabelled(tmp_path, make_config, caplog):
    """Whose boxes are the shared id's cannot be known: neither image gets them (before, the second
    image silently got the first one's boxes)."""
    write_images(tmp_path / "images")
    coco_path = write_coco(tmp_path / "coco.json")
    coco = json.loads(coco_path.read_text())
    a, b = coco["images"][:2]
    coco["annotations"] = [ann for ann in coco["annotations"] if ann["image_id"] != b["id"]]
    b["id"] = a["id"]
    coco_path.write_text(json.dumps(coco))
    source = {"format": "coco", "images": "images", "annotations": "coco.json"}
    dataset, labelled = _read_as_val(make_config, caplog, tmp_path, source, "detection, segmentation")
    assert labelled == {a["file_name"]: set(), b["file_name"]: set(), **{s.key: {"detection", "segmentation"}
                                                                         for s in SCENES[2:]}}
    assert dataset.problem_counts()[kinds.SHARED_IMAGE_ID] == 2
    messages = [r.getMessage() for r in caplog.records]
    for name in (a["file_name"], b["file_name"]):
        assert any(f"{coco_path} ({name}): 1 image id shared with another image (image unlabelled)" in m
                   for m in messages), messages
    assert any("2 image id shared with another image (image unlabelled)" in m for m in messages), messages
    counts = coco_to_yolo(coco_path, tmp_path / "images", tmp_path / "yolo")
    assert counts["images"] == len(SCENES) and counts[f"{kinds.SHARED_IMAGE_ID} (in the COCO files)"] == 2
    assert sorted(p.name for p in (tmp_path / "yolo" / "labels" / "train").rglob("*.txt")) == ["c.txt", "d.txt"]


# ------------------------------------------------------------ 6. a training split with nothing to learn

@pytest.fixture
def malformed_yolo(tmp_path) -> Path:
    """A YOLO-seg set whose every label line is malformed (a comma-separated export)."""
    data_yaml = write_yolo(tmp_path / "yolo")
    for label in (tmp_path / "yolo" / "labels" / "train").rglob("*.txt"):
        label.write_text("".join(",".join(line.split()) + "\n" for line in label.read_text().splitlines()))
    return data_yaml


@pytest.mark.parametrize("tasks, task", [("detection", "detection"), ("detection, segmentation", "detection"),
                                         ("segmentation", "segmentation")])
def test_training_split_without_usable_labels_stops(malformed_yolo, make_config, tasks, task):
    source = {"format": "yolo", "annotations": str(malformed_yolo)}
    cfg = make_config(f"data.root={malformed_yolo.parent}", f"model.tasks=[{tasks}]", f"data.train={flow(source)}",
                      f"data.val={flow(source)}")
    with pytest.raises(DataError) as info:
        build_data(cfg)
    message = str(info.value)
    lines = sum(1 for scene in SCENES for _ in scene.objects)
    assert one_line(message) and message.startswith(f"data.train: no image has a usable {task} label")
    assert f"{lines} malformed label (dropped)" in message and f"drop {task} from model.tasks" in message


def test_source_asked_for_a_task_its_malformed_labels_lack_names_them(malformed_yolo, make_config):
    source = {"format": "yolo", "annotations": str(malformed_yolo), "tasks": ["segmentation"]}
    cfg = make_config(f"data.root={malformed_yolo.parent}", "model.tasks=[segmentation]", f"data.train={flow(source)}",
                      f"data.val={flow(source)}")
    with pytest.raises(DataError) as info:
        build_data(cfg)
    assert one_line(info.value) and "does not label segmentation" in str(info.value)
    assert "malformed label (dropped) in 3 file(s)" in str(info.value)


def test_training_split_of_empty_label_files_stops(tmp_path, make_config):
    data_yaml = write_yolo(tmp_path / "yolo")
    for label in (tmp_path / "yolo" / "labels" / "train").rglob("*.txt"):
        label.write_text("")
    source = {"format": "yolo", "annotations": str(data_yaml)}
    cfg = make_config(f"data.root={tmp_path}", "model.tasks=[detection]", f"data.train={flow(source)}",
                      f"data.val={flow(source)}")
    with pytest.raises(DataError) as info:
        build_data(cfg)
    assert one_line(info.value) and f"its {len(SCENES)} labelled image(s) hold none" in str(info.value)


# ------------------------------------------------------------ 7. label CSV headers

def write_csv(path: Path, header: str) -> Path:
    path.write_text(header + "\n" + "".join(f"{s.key},{s.label}\n" for s in SCENES), encoding="utf-8")
    return path


@pytest.mark.parametrize("header", ["file_name,label", "filename,class", "image,label", "image_id,label",
                                    "Path,Category", "\ufefffile,label", "img,target"])
def test_label_csv_with_a_common_header(tmp_path, make_config, header):
    write_images(tmp_path / "images")
    write_csv(tmp_path / "labels.csv", header)
    source = {"format": "csv", "images": "images", "labels": "labels.csv"}
    cfg = make_config(f"data.root={tmp_path}", "model.tasks=[classification]", f"data.train={flow(source)}",
                      f"data.val={flow(source)}")
    data = build_data(cfg, train=False)
    assert data.classes["classification"] == ["indoor", "outdoor"]
    assert len(data.val.dataset) == len(SCENES)


def test_label_csv_columns_named_by_the_source(tmp_path, make_config):
    write_images(tmp_path / "images")
    write_csv(tmp_path / "labels.csv", "picture,kind")
    source = {"format": "csv", "images": "images", "labels": "labels.csv"}
    cfg = make_config(f"data.root={tmp_path}", "model.tasks=[classification]", f"data.train={flow(source)}",
                      f"data.val={flow(source)}")
    with pytest.raises(DataError) as info:
        build_data(cfg, train=False)
    assert one_line(info.value) and "file_column" in str(info.value) and "picture,kind" in str(info.value)
    named = {**source, "file_column": "picture", "label_column": "kind"}
    data = build_data(make_config(f"data.root={tmp_path}", "model.tasks=[classification]", f"data.train={flow(named)}",
                                  f"data.val={flow(named)}"), train=False)
    assert len(data.val.dataset) == len(SCENES)
    wrong = {**named, "label_column": "kinds"}
    with pytest.raises(DataError) as info:
        build_data(make_config(f"data.root={tmp_path}", "model.tasks=[classification]", f"data.train={flow(wrong)}",
                               f"data.val={flow(wrong)}"), train=False)
    assert one_line(info.value) and "'kinds'" in str(info.value) and "label_column" in str(info.value)


def test_label_csv_rows_that_disagree_leave_the_image_unlabelled(tmp_path, make_config, caplog):
    """Two rows giving one image different labels: unlabelled and reported (before, the later row won
    silently); rows repeating the same labels are taken once, without a report."""
    write_images(tmp_path / "images")
    rows = [f"{s.key},{s.label}" for s in SCENES] + ["a.png,outdoor", "b.png,outdoor", "a.png,indoor"]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("file,label\n" + "".join(row + "\n" for row in rows))
    assert SCENES[0].key == "a.png" and SCENES[1].label == "outdoor"
    source = {"format": "csv", "images": "images", "labels": "labels.csv"}
    dataset, labelled = _read_as_val(make_config, caplog, tmp_path, source, "classification")
    assert labelled == {"a.png": set(), **{s.key: {"classification"} for s in SCENES[1:]}}
    assert dataset.problem_counts() == {kinds.CONFLICTING_ROWS: 1}
    assert any(f"{csv_path} (a.png): 1 image in rows with different labels (image unlabelled)" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("source, needle", [
    ({"format": "yolo", "annotations": "data.yaml", "file_column": "f"}, "does not read 'file_column'"),
    ({"format": "imagefolder", "images": "i", "label_column": "l"}, "does not read 'label_column'"),
    ({"format": "coco", "images": "i", "annotations": "a.json", "file_column": "f"}, "give 'labels' too"),
])
def test_column_keys_only_for_sources_reading_a_labels_csv(source, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"data.train={flow(source)}"])
    assert one_line(info.value) and needle in str(info.value)
