"""The data section of the config: splits as lists of typed sources, checked before any work starts."""

from __future__ import annotations

import pytest

from conftest import one_line
from vision_mtl.config import Config, SourceConfig, config_from_dict, config_to_dict, load_config
from vision_mtl.errors import ConfigError


def test_a_split_is_a_list_of_sources():
    cfg = load_config(None, [
        "data.train=[{format: coco, images: img, annotations: a.json, tasks: [detection], weight: 2},"
        " {format: masks, images: img, masks: m, class_map: {0: background, 7: road, 8: road}}]"])
    coco, masks = cfg.data.train
    assert coco == SourceConfig(format="coco", images="img", annotations="a.json", tasks=["detection"], weight=2.0)
    assert masks.class_map == {0: "background", 7: "road", 8: "road"}
    assert config_from_dict(config_to_dict(cfg)) == cfg  # survives checkpoints and config.yaml


def test_mapping_override_edits_the_one_default_source_unless_the_format_changes():
    (source,) = load_config(None, ["data.val.labels=null"]).data.val
    assert source.format == "files" and source.labels is None and source.masks == "val/masks"
    (source,) = load_config(None, ["data.val={format: yolo, annotations: d.yaml}"]).data.val
    assert source == SourceConfig(format="yolo", annotations="d.yaml")  # nothing of the shapes paths left


@pytest.mark.parametrize("override, needles", [
    ("data.train=[{format: parquet, images: x}]", ["data.train[0].format", "parquet", "coco", "yolo"]),
    ("data.train=[{format: coco, images: x}]", ["data.train[0]", "coco", "annotations"]),
    ("data.train=[{format: yolo, annotations: d.yaml, images: x}]", ["data.train[0]", "images", "annotations"]),
    ("data.train=[{format: csv, images: x, labels: l.csv, weight: 0}]", ["data.train[0]", "weight"]),
    ("data.train=[{format: coco, images: x, annotations: a.json, labels: l.csv, label_field: scene}]",
     ["labels", "label_field"]),
    ("data.train=[{format: masks, images: x, masks: m, class_map: [1, 2]}]", ["data.train[0].class_map", "mapping"]),
    ("data.train=[{format: masks, images: x, masks: m, tasks: [depth]}]", ["data.train[0].tasks", "depth"]),
    ("data.val=[]", ["data.val", "no sources"]),
    ("data.train=[{format: coco, images: x, annotations: a.json, classes: [a, b]}]", ["data.train[0]", "class_map"]),
    ("data.train=[{format: yolo, annotations: d.yaml, class_map: {1: a}}]", ["data.train[0]", "mask values"]),
    ("data.train=[{format: csv, images: x, labels: l.csv, colour: red}]", ["data.train[0].colour", "class_map"]),
])
def test_bad_sources_are_one_line_config_errors(override, needles):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert one_line(info.value)
    for needle in needles:
        assert needle in str(info.value)


def test_key_override_into_a_source_list_asks_for_the_whole_list(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("data:\n  train:\n    - {format: csv, images: a, labels: a.csv}\n"
                    "    - {format: csv, images: b, labels: b.csv}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["data.train.weight=2"])
    assert one_line(info.value) and "data.train.weight" in str(info.value) and "list" in str(info.value)


def test_old_style_saved_config_still_loads():
    """Checkpoints written before splits became lists hold a mapping per split."""
    saved = config_to_dict(Config())
    saved["data"]["train"] = {"images": "train/images", "annotations": "train/annotations.json",
                              "masks": "train/masks", "labels": None}
    (source,) = load_config(None, base=saved).data.train
    assert source.format == "files" and source.labels is None and source.annotations == "train/annotations.json"
