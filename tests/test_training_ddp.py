"""Training under ``torchrun --standalone --nproc_per_node 2`` (gloo, CPU): both processes end with
the same weights even when one of them has steps with no detection label, and the metrics they
report are those of the final checkpoint evaluated in one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, SHAPES_CLASSES
from vision_mtl.evaluation.saved import evaluate_weights


@pytest.fixture(scope="module")
def ranks(tiny_overrides, shapes_root, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    split = f"{shapes_root}/train"
    # Classification + segmentation from one source, detection from another drawn 10x less often:
    # many batches on a process hold no detection label at all.
    sources = (f"data.train=[{{format: files, images: {split}/images, masks: {split}/masks, labels: {split}/labels.csv}},"
               f"{{format: files, images: {split}/images, annotations: {split}/annotations.json, tasks: [detection], "
               f"weight: 0.1}}]")
    seg_classes = f"data.seg_classes=[{', '.join(SHAPES_CLASSES['segmentation'])}]"
    overrides = [*tiny_overrides, sources, seg_classes, "train.epochs=2", "train.max_steps_per_epoch=4", "train.plots=false",
                 f"run.dir={out}", "run.name=ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO_ROOT / "tests" / "distributed_train.py"), str(out), *overrides],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_both_processes_end_with_the_same_weights(ranks):
    assert [r["world"] for r in ranks] == [2, 2]
    assert any(not had for r in ranks for had in r["had_detection"])  # the case DDP must not hang on
    assert all(len(r["had_detection"]) == 8 for r in ranks)  # 2 epochs x 4 steps each, in lockstep
    for name, value in ranks[0]["parameters"].items():
        torch.testing.assert_close(ranks[1]["parameters"][name], value, rtol=0, atol=0, msg=name)


def test_metrics_match_the_checkpoint_evaluated_in_one_process(ranks):
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    run_dir = ranks[0]["run_dir"]
    single = evaluate_weights(f"{run_dir}/last.pt", progress=False).metrics
    assert single.keys() == ranks[0]["metrics"].keys()
    for key, value in single.items():  # batches are composed differently: float noise only
        assert ranks[0]["metrics"][key] == pytest.approx(value, abs=1e-3), key
