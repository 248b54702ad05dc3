"""Shared fixtures: a tiny synthetic dataset, a tiny config and one short training run per session.

Everything is generated under pytest's temporary folders; nothing is written into the repository.
The model is the 0.4M-parameter timm ``test_resnet`` at 64 px with 16 pyramid channels, so the
whole suite runs on a 2-core CPU in a few minutes.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

# One intra-op thread: these models are tiny, and on a shared 2-core machine two OpenMP threads
# busy-waiting against another process make each forward ~100x slower. Set before torch loads so
# that subprocesses (tools/*.py) inherit it as well.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from vision_mtl.config import Config, load_config  # noqa: E402
from vision_mtl.data.shapes import SCENE_CLASSES, SHAPE_CLASSES, ensure_shapes  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL, IMAGE_SIZE = 32, 8, 64

# The tiny model: every test that builds a network starts from these.
TINY_MODEL = ["model.backbone=test_resnet", "model.neck_channels=16", "model.segmentation.channels=16"]

# Class lists of the shapes dataset, as discover_classes() derives them.
SHAPES_CLASSES = {
    "classification": sorted(SCENE_CLASSES),
    "detection": list(SHAPE_CLASSES),
    "segmentation": ["background", *SHAPE_CLASSES],
}


def one_line(text: str) -> bool:
    return "\n" not in str(text).strip() and str(text).strip() != ""


def run_tool(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` as a user would, from the repository root."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / script), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_printed_quotient(quotient: float, numerator: float, denominator: float, operand_step: float,
                            quotient_step: float = 1e-3) -> None:
    """``quotient`` == ``numerator`` / ``denominator`` for figures a tool printed rounded to those steps
    (each may be off by half its step)."""
    h = operand_step / 2
    low = (numerator - h) / (denominator + h)
    high = (numerator + h) / (denominator - h) if denominator > h else math.inf
    assert low - quotient_step / 2 <= quotient <= high + quotient_step / 2, (quotient, numerator, denominator)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """32 train + 8 val synthetic 64 px images (JPEG + COCO JSON + mask PNGs + labels CSV)."""
    root = tmp_path_factory.mktemp("data") / "shapes"
    ensure_shapes(root, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=IMAGE_SIZE)
    return root


@pytest.fixture(scope="session")
def tiny_overrides(shapes_root, tmp_path_factory) -> list[str]:
    """Overrides that make a full run tiny; tools/train.py (configs/shapes.yaml) finds the generated set."""
    runs = tmp_path_factory.mktemp("runs")
    return [
        *TINY_MODEL,
        f"data.root={shapes_root}",
        f"data.synthetic_train_images={NUM_TRAIN}",
        f"data.synthetic_val_images={NUM_VAL}",
        f"data.image_size={IMAGE_SIZE}",
        "data.num_workers=0",
        "train.batch_size=4",
        "train.epochs=2",
        "train.max_steps_per_epoch=2",
        "train.device=cpu",
        f"run.dir={runs}",
    ]


@pytest.fixture
def make_config(tiny_overrides):
    """``make_config("train.epochs=1", ...)`` -> the tiny Config with extra overrides on top."""

    def make(*extra: str, path: str | Path | None = None) -> Config:
        return load_config(path, [*tiny_overrides, *extra])

    return make


def trained_run_overrides(tiny_overrides: list[str], runs: Path) -> list[str]:
    # A low score threshold keeps some detections after so little training, so the detection
    # metrics that evaluate.py must reproduce are computed by COCOeval rather than short-cut to 0.
    return [*tiny_overrides, "train.max_steps_per_epoch=4", "model.detection.score_thresh=0.001",
            f"run.dir={runs}", "run.name=tiny"]


@pytest.fixture(scope="session")
def trained_run(tiny_overrides, tmp_path_factory) -> Path:
    """One 2-epoch, 4-steps-per-epoch training through ``tools/train.py``, shared by the e2e,
    evaluation, resume and checkpoint-error tests. Returns the run folder."""
    runs = tmp_path_factory.mktemp("trained")
    proc = run_tool("train.py", *trained_run_overrides(tiny_overrides, runs))
    assert proc.returncode == 0, f"tools/train.py failed:\n{proc.stdout}\n{proc.stderr}"
    run_dir = runs / "tiny"
    assert run_dir.is_dir(), proc.stderr
    return run_dir
