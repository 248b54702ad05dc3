"""The command-line tools: user errors are one 'error:' line with exit code 2; the benchmark prints its ratio."""

from __future__ import annotations

import re

import pytest

from conftest import run_tool


def assert_user_error(proc, *needles: str, only_line: bool = True) -> str:
    """Exit code 2, no traceback, the message on one 'error: ' line (the only stderr line unless the
    tool legitimately logged progress before failing)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    if only_line:
        assert len(lines) == 1, proc.stderr
    assert lines[-1].startswith("error: ")
    assert sum(line.startswith("error:") for line in lines) == 1
    for needle in needles:
        assert needle in lines[-1]
    return lines[-1]


def test_evaluate_missing_weights(tmp_path):
    missing = tmp_path / "nonexistent.pt"
    assert_user_error(run_tool("evaluate.py", "--weights", str(missing)), str(missing))


def test_train_bad_override_fails_before_any_work(tmp_path):
    proc = run_tool("train.py", "train.epochs=abc", f"run.dir={tmp_path}")
    assert_user_error(proc, "train.epochs")
    assert not list(tmp_path.iterdir())  # no run folder, no data generated


@pytest.mark.parametrize("args, needle", [
    (["model", "model.backbone=resnet_does_not_exist"], "resnet_does_not_exist"),
    (["model", "model.neck_chanels=16"], "model.neck_chanels"),
])
def test_benchmark_user_errors(args, needle):
    # the benchmark logs its settings before building the models, so the error may be the second line
    assert_user_error(run_tool("benchmark.py", *args), needle, only_line=False)


def test_benchmark_prints_ratio_multi_over_three_single():
    # overrides before the options: see test_benchmark_accepts_documented_argument_order for the other order.
    # batch 2, not 1: 16 channels at 64 px with one image hit the GroupNorm bug (see test_heads.py)
    proc = run_tool("benchmark.py", "--imgsz", "64", "--batch", "2", "--rounds", "2",
                    "model", "model.backbone=test_resnet", "model.neck_channels=16")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    match = re.search(r"ratio multi / three single\s+([0-9.eE+-]+)", output)
    assert match, output
    ratio = float(match.group(1))
    assert ratio > 0
    for name in ("multi-task ms", "classification ms", "detection ms", "segmentation ms", "three single-task ms"):
        assert re.search(rf"{name}\s+[0-9.]+", output), name


def test_benchmark_accepts_documented_argument_order():
    proc = run_tool("benchmark.py", "model", "--imgsz", "64", "--batch", "2", "--rounds", "1",
                    "model.backbone=test_resnet", "model.neck_channels=16")
    assert proc.returncode == 0, proc.stderr
    assert "ratio multi / three single" in proc.stdout + proc.stderr


def test_benchmark_export_prints_onnxruntime_and_torch_side_by_side():
    proc = run_tool("benchmark.py", "export", "--imgsz", "64", "--batch", "1", "2", "--rounds", "1",
                    "--exporter", "torchscript", "model.backbone=test_resnet", "model.neck_channels=16",
                    "model.segmentation.channels=16")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    rows = re.findall(r"batch (\d+)\s+torch ms\s+([0-9.]+)\s+onnxruntime ms\s+([0-9.]+)\s+"
                      r"ratio onnxruntime / torch ([0-9.]+)", output)
    assert [r[0] for r in rows] == ["1", "2"], output
    for _, torch_ms, ort_ms, ratio in rows:
        assert float(torch_ms) > 0 and float(ort_ms) > 0
        assert float(ratio) == pytest.approx(float(ort_ms) / float(torch_ms), rel=1.0)  # median of ratios, same scale
