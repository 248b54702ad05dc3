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


def _train_in_two_processes(out, overrides: list[str]) -> list[dict]:
    """``tests/distributed_train.py`` under torchrun with 2 gloo processes; what each rank saved."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO_ROOT / "tests" / "distributed_train.py"), str(out), *overrides, f"run.dir={out}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _mixed_sources(shapes_root) -> list[str]:
    """Classification + segmentation from one source, detection from another drawn 10x less often:
    many batches on a process hold no detection label at all."""
    split = f"{shapes_root}/train"
    sources = (f"data.train=[{{format: files, images: {split}/images, masks: {split}/masks, labels: {split}/labels.csv}},"
               f"{{format: files, images: {split}/images, annotations: {split}/annotations.json, tasks: [detection], "
               f"weight: 0.1}}]")
    return [sources, f"data.seg_classes=[{', '.join(SHAPES_CLASSES['segmentation'])}]"]


@pytest.fixture(scope="module")
def ranks(tiny_overrides, shapes_root, tmp_path_factory) -> list[dict]:
    return _train_in_two_processes(tmp_path_factory.mktemp("ddp"), [
        *tiny_overrides, *_mixed_sources(shapes_root), "train.epochs=2", "train.max_steps_per_epoch=4",
        "train.plots=false", "run.name=ddp"])


@pytest.fixture(scope="module", params=["upgrad", "gradnorm"])
def balanced_ranks(request, tiny_overrides, shapes_root, tmp_path_factory) -> tuple[str, list[dict]]:
    """A gradient balancer (bypasses DDP, reduces the per-task Jacobians itself) and GradNorm (through
    DDP, its weights' gradients averaged by the trainer), 3 steps of 2 x 2 images."""
    return request.param, _train_in_two_processes(tmp_path_factory.mktemp("ddp"), [
        *tiny_overrides, *_mixed_sources(shapes_root), f"mtl.balancer={request.param}", "train.epochs=1",
        "train.max_steps_per_epoch=3", "train.batch_size=2", "train.plots=false", "train.ema_decay=0",
        "run.name=balanced"])


def test_both_processes_end_with_the_same_weights(ranks):
    assert [r["world"] for r in ranks] == [2, 2]
    assert any(not had for r in ranks for had in r["had_detection"])  # the case DDP must not hang on
    assert all(len(r["had_detection"]) == 8 for r in ranks)  # 2 epochs x 4 steps each, in lockstep
    for name, value in ranks[0]["parameters"].items():
        torch.testing.assert_close(ranks[1]["parameters"][name], value, rtol=0, atol=0, msg=name)
    assert all(r["ddp_buckets"] > 0 for r in ranks)  # DDP reduced the gradients


def test_metrics_match_the_checkpoint_evaluated_in_one_process(ranks):
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    run_dir = ranks[0]["run_dir"]
    single = evaluate_weights(f"{run_dir}/last.pt", progress=False).metrics
    assert single.keys() == ranks[0]["metrics"].keys()
    for key, value in single.items():  # batches are composed differently: float noise only
        assert ranks[0]["metrics"][key] == pytest.approx(value, abs=1e-3), key


def test_balancers_train_in_two_processes_to_the_same_weights(balanced_ranks):
    """The per-task rows (upgrad) or the weights' gradients (gradnorm) are averaged over the processes,
    so both end identical, even with steps where detection is labelled on one process only."""
    name, ranks = balanced_ranks
    assert any(not had for r in ranks for had in r["had_detection"])
    assert all(len(r["had_detection"]) == 3 for r in ranks)
    # upgrad also shares rank 0's BatchNorm statistics after each step (DDP broadcasts them before each
    # forward); GradNorm's first losses L_t(0) are each process's own, its weights are the same.
    kinds = {"parameters": None, "buffers": None} if name == "upgrad" else {"parameters": None, "balancer": ["logits"]}
    for kind, keys in kinds.items():
        assert ranks[0][kind].keys() == ranks[1][kind].keys() and ranks[0][kind], kind
        for key in keys or ranks[0][kind]:
            torch.testing.assert_close(ranks[1][kind][key], ranks[0][kind][key], rtol=0, atol=0, msg=f"{kind} {key}")
    if name == "upgrad":
        assert [r["ddp_buckets"] for r in ranks] == [0, 0]  # DDP bypassed: its hooks never reduced
    else:
        assert all(r["ddp_buckets"] > 0 for r in ranks)
        assert (ranks[0]["balancer"]["logits"] != 0).all() and (ranks[0]["balancer"]["initial"] > 0).all()
