"""Config schema: defaults, YAML, overrides, validation errors (one line, naming the key)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import REPO_ROOT, one_line
from vision_mtl.config import (TASKS, Config, LossWeights, config_from_dict, config_to_dict, load_config, save_config)
from vision_mtl.errors import ConfigError, VisionMTLError


def test_defaults_equal_documented_yaml():
    """Only the shapes config asks for generated data; everything else in it is the schema default."""
    shapes = load_config(REPO_ROOT / "configs" / "shapes.yaml")
    assert shapes.data.synthetic == "shapes" and Config().data.synthetic is None
    shapes.data.synthetic = None
    assert load_config() == shapes == Config()


def test_yaml_documents_every_key():
    """The YAML is the documentation of the defaults: it names every schema key, not just some."""
    raw = yaml.safe_load((REPO_ROOT / "configs" / "shapes.yaml").read_text())
    expected = config_to_dict(Config())
    expected["data"]["synthetic"] = "shapes"
    assert raw == expected


def test_overrides_set_values_of_the_right_type():
    cfg = load_config(None, ["train.epochs=5", "model.backbone=resnet10t", "train.loss_weights.detection=3",
                             "train.lr=1", "model.tasks=[detection, segmentation]", "train.max_steps_per_epoch=null",
                             "data.seg_classes=[bg, thing]", "run.name=a=b"])
    assert cfg.train.epochs == 5
    assert cfg.model.backbone == "resnet10t"
    assert cfg.train.loss_weights.detection == 3.0 and isinstance(cfg.train.loss_weights.detection, float)
    defaults = LossWeights()  # siblings keep their defaults
    assert (cfg.train.loss_weights.classification, cfg.train.loss_weights.segmentation) == \
        (defaults.classification, defaults.segmentation)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.tasks == ["detection", "segmentation"]
    assert cfg.train.max_steps_per_epoch is None
    assert cfg.data.seg_classes == ["bg", "thing"]
    assert cfg.run.name == "a=b"  # only the first '=' separates key from value


def test_overrides_apply_over_yaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 2\nmodel:\n  tasks: [classification]\n")
    cfg = load_config(path, ["train.epochs=7"])
    assert cfg.train.epochs == 7  # override wins over the file
    assert cfg.train.batch_size == 2  # file wins over the default
    assert cfg.model.tasks == ["classification"]
    assert cfg.train.lr == Config().train.lr  # untouched keys keep the default


def test_base_then_file_then_overrides(tmp_path):
    base = config_to_dict(load_config(None, ["train.epochs=3", "train.batch_size=3", "train.seed=3"]))
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {batch_size: 4, seed: 4}\n")
    cfg = load_config(path, ["train.seed=5"], base=base)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed) == (3, 4, 5)


@pytest.mark.parametrize("override", ["data.train.labels=null", "data.val.masks=val/masks"])
def test_override_one_split_key_keeps_the_other_split_keys(override):
    """A mapping override of a one-source split edits that source (the pre-list form keeps working)."""
    default = Config().data
    cfg = load_config(None, [override])
    (split,) = cfg.data.train if override.startswith("data.train") else cfg.data.val
    (reference,) = default.train if override.startswith("data.train") else default.val
    assert split.format == reference.format == "files"
    assert split.images == reference.images
    assert split.annotations == reference.annotations
    assert split.masks == reference.masks


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(None, ["model.tasks=[segmentation]", "train.loss_weights.segmentation=0.5",
                             "data.seg_classes=[a, b]", "train.max_steps_per_epoch=4"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("override, key", [
    ("train.epoch=5", "train.epoch"),
    ("train.loss_weights.detektion=2", "train.loss_weights.detektion"),
    ("model.detection.nms=0.5", "model.detection.nms"),
    ("trian=1", "trian"),
])
def test_unknown_key_names_full_key_and_lists_valid_keys(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert one_line(message)
    assert f"'{key}'" in message
    section = key.rsplit(".", 1)[0] if "." in key else ""
    node = Config()
    for part in filter(None, section.split(".")):
        node = getattr(node, part)
    for valid in (f.name for f in dataclasses.fields(node)):
        assert valid in message


@pytest.mark.parametrize("override, key", [
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=1.5", "train.epochs"),
    ("train.epochs=true", "train.epochs"),
    ("train.lr=fast", "train.lr"),
    ("train.max_steps_per_epoch=many", "train.max_steps_per_epoch"),
    ("model.tasks=classification", "model.tasks"),
    ("data.seg_classes=3", "data.seg_classes"),
    ("model.classification.multi_label=maybe", "model.classification.multi_label"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert one_line(info.value)
    assert key in str(info.value)


def test_bad_choice_lists_valid_choices():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.tasks=[foo]"])
    message = str(info.value)
    assert one_line(message)
    assert "model.tasks" in message and "foo" in message
    for task in TASKS:
        assert task in message


def test_bad_literal_scalar_lists_choices():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.synthetic=mnist"])
    assert one_line(info.value)
    assert "data.synthetic" in str(info.value) and "shapes" in str(info.value)


@pytest.mark.parametrize("override", ["train.epochs", "=5", "train.epochs 5"])
def test_malformed_override(override):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert one_line(info.value)
    assert "key=value" in str(info.value)


def test_override_through_a_value_is_an_error():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=5", "train.epochs.x=1"])
    assert one_line(info.value) and "train.epochs" in str(info.value)


def test_section_given_a_scalar_is_an_error():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train=5"])
    assert one_line(info.value) and "train" in str(info.value)


@pytest.mark.parametrize("overrides, needle", [
    (["model.tasks=[]"], "model.tasks"),
    (["model.tasks=[detection, detection]"], "model.tasks"),
    (["data.image_size=100"], "data.image_size"),
    (["model.detection.levels=[1, 3]"], "model.detection.levels"),
    (["model.segmentation.levels=[4, 5]"], "model.segmentation.levels"),
    (["train.epochs=0"], "train.epochs"),
    (["train.batch_size=0"], "train.batch_size"),
])
def test_cross_field_validation(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert one_line(info.value) and needle in str(info.value)


def test_missing_or_non_mapping_yaml_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert one_line(info.value) and "nope.yaml" in str(info.value)
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert one_line(info.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  backbone: resnet18\n  neck_chanels: 32\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert one_line(info.value) and "model.neck_chanels" in str(info.value)


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, VisionMTLError)


def test_off_is_the_word_not_yaml_false():
    """YAML 1.1 reads a bare `off` as false; train.amp=off must still mean the choice "off"."""
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="valid choices: auto, off, bf16, fp16"):
        load_config(None, ["train.amp=yes"])
