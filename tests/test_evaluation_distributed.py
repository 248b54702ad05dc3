"""Evaluation sharded over two torchrun processes (gloo, CPU): every process returns exactly what
one process evaluating the whole val split returns, and each image is evaluated once."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from torch.utils.data import DataLoader

from conftest import REPO_ROOT
from distributed_evaluate import evaluate, multi_label_metrics
from vision_mtl.evaluation.evaluator import shard_loader
from vision_mtl.utils.distributed import Processes


@pytest.fixture(scope="module")
def ranks(trained_run, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO_ROOT / "tests" / "distributed_evaluate.py"), str(trained_run / "best.pt"), str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [pickle.loads((out / f"rank{rank}.pkl").read_bytes()) for rank in range(2)]


@pytest.fixture(scope="module")
def single(trained_run):
    return evaluate(trained_run / "best.pt", Processes())


def test_every_rank_gets_the_single_process_metrics(ranks, single):
    assert {"classification/top1", "detection/mAP", "segmentation/mIoU"} <= single.metrics.keys()
    assert single.detections  # COCOeval ran on real detections, not the no-detection short cut
    for rank in ranks:
        assert rank["world"] == 2
        evaluation = rank["evaluation"]
        assert evaluation.metrics == single.metrics
        assert evaluation.detections == single.detections  # all of them, in the split's order
        assert evaluation.curves.keys() == single.curves.keys()
        for key, curve in single.curves.items():
            np.testing.assert_array_equal(evaluation.curves[key], curve, err_msg=key)


def test_every_rank_gets_the_first_examples_in_order(ranks, single):
    assert [e.result.meta["index"] for e in single.examples] == [0, 1, 2, 3, 4]
    for rank in ranks:
        examples = rank["evaluation"].examples
        assert [e.result.meta["index"] for e in examples] == [0, 1, 2, 3, 4]
        for got, expected in zip(examples, single.examples):
            np.testing.assert_array_equal(got.image, expected.image)
            np.testing.assert_array_equal(got.result.boxes, expected.result.boxes)
            np.testing.assert_array_equal(got.result.mask, expected.result.mask)


def test_multi_label_scores_are_gathered_from_every_rank(ranks):
    expected = multi_label_metrics(Processes())
    assert "classification/mAP" in expected
    for rank in ranks:
        assert rank["multi_label"] == expected


@pytest.mark.parametrize("world", [2, 3])
def test_shards_hold_every_image_exactly_once(world):
    """11 images over 2 or 3 processes: no image repeated to even the shards out, none lost."""
    loader = DataLoader(list(range(11)), batch_size=2)
    seen = [int(i) for rank in range(world) for batch in shard_loader(loader, rank, world) for i in batch]
    assert sorted(seen) == list(range(11))
