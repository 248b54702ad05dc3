"""tools/compare_mtl.py: single-task baselines, multi-task runs, Δm and the reuse of finished runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from conftest import run_tool
from vision_mtl.benchmarks.compare_mtl import Outcome, Variant, delta_m, plan_variants
from vision_mtl.errors import ConfigError


def _outcome(tasks: tuple[str, ...], metrics: dict[str, float]) -> Outcome:
    return Outcome(Variant("x", (), tasks), metrics, 1, 1.0, Path("."))


def test_delta_m_is_the_mean_relative_change_against_each_single_task_run():
    singles = {"classification": _outcome(("classification",), {"classification/top1": 0.8}),
               "detection": _outcome(("detection",), {"detection/mAP": 0.5})}
    multi = _outcome(("classification", "detection"), {"classification/top1": 0.88, "detection/mAP": 0.4})
    assert delta_m(multi, singles) == pytest.approx(100 * (0.1 + -0.2) / 2)


def test_plan_runs_each_single_task_model_plainly_and_refuses_duplicate_names():
    variants = plan_variants(["classification", "detection"], ["fixed", "dwa"], ["hard"], {"w": ["a=1"]})
    assert [v.name for v in variants] == ["single-classification", "single-detection", "mtl-fixed", "mtl-dwa", "w"]
    assert "train.loss_weights.classification=1.0" in variants[0].overrides
    assert "mtl.balancer=fixed" in variants[0].overrides
    with pytest.raises(ConfigError, match="share a name"):
        plan_variants(["detection"], ["fixed"], ["hard"], {"mtl-fixed": ["a=1"]})


def test_delta_m_is_not_a_number_when_a_single_task_run_scored_zero():
    singles = {"detection": _outcome(("detection",), {"detection/mAP": 0.0})}
    assert math.isnan(delta_m(_outcome(("detection",), {"detection/mAP": 0.1}), singles))


@pytest.mark.parametrize("runs, message", [
    (["--run", "seg2", "key", "train.epochs=1"],
     "error: --run seg2: 'key' is not a key=value override; a --run takes its NAME, then key=value overrides up to "
     "the next flag"),
    (["--run", "seg2", "train.loss_weights.segmentation=2", "--run", "typo", "mtl.balanser=dwa"],
     "error: compare: run typo: unknown config key 'mtl.balanser'"),
], ids=["item-without-equals", "unknown-key-in-the-last-run"])
def test_every_run_is_checked_before_any_trains(runs, message, tiny_overrides, tmp_path):
    out = tmp_path / "cmp"
    proc = run_tool("compare_mtl.py", *tiny_overrides, "train.epochs=1", "--out", str(out), *runs)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith(message) and "\n" not in proc.stderr.strip()
    assert not out.exists()  # no run trained


def test_compare_tool_writes_the_table_and_reuses_finished_runs(tiny_overrides, tmp_path):
    out = tmp_path / "cmp"
    common = ["--balancers", "uncertainty", "--run", "seg2", "train.loss_weights.segmentation=2",
              "--out", str(out), *tiny_overrides, "train.epochs=1", "train.plots=false",
              "model.tasks=[classification,segmentation]"]
    first = run_tool("compare_mtl.py", *common, "--time-rounds", "1", "--time-batch", "1")
    assert first.returncode == 0, first.stderr
    with (out / "compare.csv").open() as fh:
        rows = {row["run"]: row for row in csv.DictReader(fh)}
    names = ["single-classification", "single-segmentation", "mtl-uncertainty", "seg2"]
    assert list(rows) == names
    pairs = (("classification", "classification/top1"), ("segmentation", "segmentation/mIoU"))
    singles = {task: json.loads((out / f"single-{task}" / "outcome.json").read_text())["metrics"][key]
               for task, key in pairs}
    for name in names[2:]:
        metrics = json.loads((out / name / "outcome.json").read_text())["metrics"]
        changes = [(metrics[key] - singles[task]) / singles[task] if singles[task] else math.nan for task, key in pairs]
        assert float(rows[name]["Δm %"]) == pytest.approx(100 * sum(changes) / 2, nan_ok=True)
    for column in ("train x singles", "inference x singles"):  # each single's share of the singles' sum
        assert sum(float(rows[n][column]) for n in names[:2]) == pytest.approx(1.0)
    assert rows["single-segmentation"]["Δm %"] == "" and rows["single-segmentation"]["classification/top1"] == ""
    assert "| seg2 |" in (out / "compare.md").read_text()
    stamp = (out / "seg2" / "outcome.json").stat().st_mtime_ns
    again = run_tool("compare_mtl.py", *common, "--time-rounds", "0")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("finished before") == 4
    assert (out / "seg2" / "outcome.json").stat().st_mtime_ns == stamp
    changed = run_tool("compare_mtl.py", *common, "--time-rounds", "0", "train.lr=0.01")
    assert changed.returncode == 2
    assert "was trained with other settings (train.lr: 0.002 -> 0.01)" in changed.stderr
