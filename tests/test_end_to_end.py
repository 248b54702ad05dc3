"""A real run through tools/train.py and tools/evaluate.py on the tiny shapes data, then a resume."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from conftest import REPO_ROOT, run_tool, trained_run_overrides
from vision_mtl.config import load_config
from vision_mtl.data.sample import to_float
from vision_mtl.data.loader import build_data
from vision_mtl.engine.checkpoint import load_checkpoint, load_model

HEADLINE = ("classification/top1", "detection/mAP", "detection/mAP50", "segmentation/mIoU")


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_folder_holds_config_checkpoints_and_metrics(trained_run, tiny_overrides):
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "metrics.json"):
        assert (trained_run / name).is_file(), name
    assert not list(trained_run.glob("*.tmp"))

    # config.yaml is what the run used (tools/train.py's default config, configs/shapes.yaml)
    used = load_config(trained_run / "config.yaml")
    assert used.model.backbone == "test_resnet" and used.train.epochs == 2
    assert used == load_config(REPO_ROOT / "configs" / "shapes.yaml",
                               trained_run_overrides(tiny_overrides, trained_run.parent))

    rows = read_csv(trained_run / "metrics.csv")
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0]
    for row in rows:
        assert math.isfinite(float(row["loss"])) and float(row["loss"]) > 0
        for key in HEADLINE:
            assert 0.0 <= float(row[key]) <= 1.0

    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in HEADLINE:
        assert 0.0 <= metrics[key] <= 1.0, key
    # metrics.json is the best epoch's row of metrics.csv
    best_row = rows[int(metrics["epoch"]) - 1]
    for key, value in metrics.items():
        if key != "epoch":
            assert float(best_row[key]) == pytest.approx(value, abs=1e-9), key

    last, best = load_checkpoint(trained_run / "last.pt"), load_checkpoint(trained_run / "best.pt")
    assert last["epoch"] == 2  # epochs completed
    assert best["epoch"] == int(metrics["epoch"])
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "position"} <= set(last["training"])
    assert "training" not in best  # best.pt is for deployment: weights, config, classes
    assert last["best_metrics"] == metrics


def test_evaluate_reproduces_training_metrics(trained_run):
    proc = run_tool("evaluate.py", "--weights", str(trained_run / "best.pt"))
    assert proc.returncode == 0, proc.stderr
    out = trained_run / "eval" / "best" / "metrics.json"  # default: in the run folder
    assert out.is_file()
    evaluated = json.loads(out.read_text())
    trained = {k: v for k, v in json.loads((trained_run / "metrics.json").read_text()).items() if k != "epoch"}
    assert evaluated.keys() == trained.keys()
    for key, value in trained.items():
        assert evaluated[key] == pytest.approx(value, abs=1e-6), key
    # COCOeval really scored detections (not the no-detection short cut): the model does output boxes
    model, cfg, state = load_model(trained_run / "best.pt")
    batch = next(iter(build_data(cfg, classes=state["classes"], train=False).val))
    with torch.no_grad():
        preds = model.eval().predict(model(to_float(batch.images)), (64, 64))
    assert int(preds["detection"]["num"].sum()) > 0
    assert "detection/mAP" in proc.stdout + proc.stderr  # the table is printed
