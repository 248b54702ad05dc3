"""tools/check_cuda.py: the dry run checks every step of the GPU check would start, and the runner
records failures, timeouts and skips and goes on (fake steps, no GPU needed)."""

from __future__ import annotations

import json
import sys

from conftest import REPO_ROOT, run_tool
from vision_mtl.benchmarks.cuda_check import (DRY_FAILED, DRY_OK, FAILED, PASSED, SKIPPED, TIMEOUT, Step, build_steps,
                                              dry_run_steps, run_steps, write_report)

TABLE_HEADER = "| step | status | seconds | key figures |"


def fake(name: str, code: str, timeout: float = 30, **kwargs) -> Step:
    """A step running ``python -c code`` (also its dry check unless given)."""
    argv = [sys.executable, "-c", code]
    return Step(name, f"fake {name}", argv, timeout, kwargs.pop("dry_check", argv), **kwargs)


def test_dry_run_checks_every_step_and_writes_the_report(tmp_path):
    proc = run_tool("check_cuda.py", "--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "check_cuda_report.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == [step.name for step in build_steps(tmp_path)]
    assert {step["status"] for step in steps.values()} == {DRY_OK}, [s["note"] for s in steps.values()]
    assert report["dry_run"] and report["environment"]["torch"] and "onnxruntime providers" in report["environment"]
    assert steps["cuda tests"]["figures"]["collected"] > 0  # the CUDA variants exist and collect
    assert "model-half.onnx" in steps["infer"]["command"]  # a dry run shows the fullest command
    markdown = (tmp_path / "check_cuda_report.md").read_text()
    assert TABLE_HEADER in markdown and markdown.count("| dry-run ok |") == len(steps)


def test_dry_run_fails_a_step_whose_tool_config_or_check_is_broken(tmp_path):
    shapes = REPO_ROOT / "configs" / "shapes.yaml"
    steps = [fake("fine", "pass", config=(shapes, ["mtl.balancer=pcgrad"])),
             fake("missing tool", "pass", files=[tmp_path / "tools" / "gone.py"]),
             fake("bad override", "pass", config=(shapes, ["train.no_such_key=1"])),
             fake("broken check", "pass", dry_check=[sys.executable, "-c", "raise SystemExit(3)"]),
             fake("unknown need", "pass", needs=("no such step",))]
    outcomes = {o.name: o for o in dry_run_steps(steps, tmp_path)}
    assert outcomes["fine"].status == DRY_OK
    for name in ("missing tool", "bad override", "broken check", "unknown need"):
        assert outcomes[name].status == DRY_FAILED, name
    assert "gone.py" in outcomes["missing tool"].note and "no_such_key" in outcomes["bad override"].note
    assert "exit 3" in outcomes["broken check"].note


def test_run_records_failures_timeouts_and_skips_and_goes_on(tmp_path):
    steps = [fake("speed", "print('  images/s    12.5')"),
             fake("crash", "raise SystemExit('boom')"),
             fake("hang", "import time; print('started', flush=True); time.sleep(60)", timeout=1),
             fake("after crash", "pass", needs=("crash",)),
             fake("with extra", "import sys; print(sys.argv)", extra={"speed": ["x"], "crash": ["y"]})]
    outcomes = {o.name: o for o in run_steps(steps, tmp_path, budget=120)}
    assert [o.status for o in outcomes.values()] == [PASSED, FAILED, TIMEOUT, SKIPPED, PASSED]
    assert outcomes["speed"].figures == {"images/s": 12.5}
    assert "boom" in "\n".join(outcomes["crash"].log_tail) and outcomes["crash"].note == "exit 1"
    assert outcomes["hang"].log_tail == ["started"] and outcomes["hang"].seconds < 10
    assert outcomes["after crash"].note == "needs crash"
    assert outcomes["with extra"].command.endswith(" x")  # extra args only of steps that passed
    assert {o.status for o in run_steps(steps[:1], tmp_path, budget=5)} == {SKIPPED}  # no budget left to start
    md, _ = write_report(list(outcomes.values()), tmp_path, dry_run=False, seconds=3.0)
    text = md.read_text()
    assert TABLE_HEADER in text and "| speed | passed |" in text and "images/s 12.5" in text
    assert "### crash: last lines of its output" in text
