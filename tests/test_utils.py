"""Small helpers: run folders, metrics log, device choice, metrics table."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import one_line
from vision_mtl.evaluation.saved import format_metrics
from vision_mtl.errors import ConfigError
from vision_mtl.utils.metrics_log import MetricsLog, write_json
from vision_mtl.utils.runtime import new_run_dir, resolve_device


def test_new_run_dir_never_reuses_a_folder(tmp_path):
    first = new_run_dir(tmp_path / "runs", "exp")
    second = new_run_dir(tmp_path / "runs", "exp")
    third = new_run_dir(tmp_path / "runs", "exp")
    assert [first.name, second.name, third.name] == ["exp", "exp-2", "exp-3"]
    assert all(p.is_dir() for p in (first, second, third))


def test_metrics_log_appends_rows_and_grows_columns(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"epoch": 1, "loss": 2.0})
    log.append({"epoch": 2, "loss": 1.5, "detection/mAP": 0.25})
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["detection/mAP"] == "" and rows[1]["detection/mAP"] == "0.25"
    # a resumed run reads the history back and keeps it
    again = MetricsLog(tmp_path)
    again.append({"epoch": 3, "loss": 1.0})
    with open(tmp_path / "metrics.csv", newline="") as fh:
        assert [float(r["epoch"]) for r in csv.DictReader(fh)] == [1.0, 2.0, 3.0]
    assert not list(tmp_path.glob("*.tmp"))


def test_write_json_is_atomic(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1.0, "a": 2.0})
    assert (tmp_path / "m.json").read_text().startswith('{\n  "a": 2.0')
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError) as info:
        resolve_device("banana")
    assert one_line(info.value) and "train.device" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
def test_cuda_device_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        resolve_device("cuda")
    assert one_line(info.value) and "CUDA" in str(info.value)


def test_format_metrics_puts_headline_metrics_first():
    table = format_metrics({"detection/AP/cat": 0.5, "segmentation/mIoU": 0.25, "detection/mAP": 0.125})
    lines = table.splitlines()
    assert [line.split()[0] for line in lines] == ["detection/mAP", "segmentation/mIoU", "detection/AP/cat"]
    assert lines[0].split()[1] == "0.1250"
