"""The command-line tools: user errors are one 'error:' line with exit code 2; the benchmark prints its
tables (what it prints, never how fast: speed figures live in docs/benchmarks.md)."""

from __future__ import annotations

import re

import pytest

from conftest import assert_printed_quotient, run_tool
from vision_mtl.utils.timing import interleaved_timings


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


def test_interleaved_timings_runs_every_candidate_each_round_in_rotating_order():
    """The benchmarks' ratios are fair only if each round times every candidate once, none always first."""
    calls = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved_timings(candidates, rounds=4, warmup=1)
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab" + "abc"  # warm-up, then rounds 0-3
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 4, "b": 4, "c": 4}


def test_benchmark_model_prints_each_time_and_their_ratio():
    """What the tool prints, not how fast anything is (figures: docs/benchmarks.md). One round, so
    each median is that round's time and the printed sum and ratio must follow from the printed times."""
    # overrides before the options: see test_benchmark_accepts_documented_argument_order for the other order.
    # batch 2, not 1: 16 channels at 64 px with one image hit the GroupNorm bug (see test_heads.py)
    proc = run_tool("benchmark.py", "--imgsz", "64", "--batch", "2", "--rounds", "1",
                    "model", "model.backbone=test_resnet", "model.neck_channels=16")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    values = {key: float(value) for key, value in re.findall(r"^\s+(\w[\w /-]*?)\s{2,}([0-9.]+)$", output, flags=re.M)}
    assert list(values) == ["multi-task ms", "classification ms", "detection ms", "segmentation ms",
                            "three single-task ms", "ratio multi / three single"], output
    singles = values["classification ms"] + values["detection ms"] + values["segmentation ms"]
    assert abs(values["three single-task ms"] - singles) < 2.001e-3  # four figures, each rounded to 1e-3
    assert_printed_quotient(values["ratio multi / three single"], values["multi-task ms"],
                            values["three single-task ms"], 1e-3)


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
    for _, torch_ms, ort_ms, ratio in rows:  # one round: the ratio is that of the printed times
        assert_printed_quotient(float(ratio), float(ort_ms), float(torch_ms), 0.01)
