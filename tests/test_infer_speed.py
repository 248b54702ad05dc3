"""The folder pipeline's speed-ups change nothing a user reads: masks restored by numpy gathers equal
the earlier torch index_select ones, PNGs written at zlib level 1 decode to the same pixels,
boxes clip as torchvision clips them; and ONNX inference starts without timm, torchvision or kornia."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import clip_boxes_to_image

from conftest import REPO_ROOT
from test_infer import GOOD, make_image_folder
from vision_mtl.data.image_io import read_image
from vision_mtl.data.transforms import content_shape
from vision_mtl.engine.preprocess import prepare_images
from vision_mtl.engine.results import clip_boxes, restore_mask
from vision_mtl.export.onnx import export_checkpoint
from vision_mtl.inference.pipeline import infer_folder
from vision_mtl.inference.predictor import Predictor
from vision_mtl.inference.writer import encode_png
from vision_mtl.utils.distributed import Processes

HEAVY = ("timm", "torchvision", "kornia", "torch._dynamo", "vision_mtl.models", "vision_mtl.training")


def index_select_restore(mask: torch.Tensor, meta: dict) -> torch.Tensor:
    """The restoration as it was before the speed-up (torch arange and index_select), the reference."""
    height, width = meta["orig_size"]
    content_height, content_width = content_shape((height, width), meta["scale"])
    content = mask[:content_height, :content_width]
    rows = torch.arange(height) * content.shape[0] // height
    cols = torch.arange(width) * content.shape[1] // width
    return content.index_select(0, rows).index_select(1, cols)


@pytest.mark.parametrize("orig_size", [(480, 640), (37, 1000), (1000, 37), (64, 64), (1, 1), (333, 257)])
def test_numpy_mask_restoration_equals_index_select(orig_size):
    size = 64
    scale = size / max(orig_size)
    mask = torch.randint(0, 7, (size, size), generator=torch.Generator().manual_seed(sum(orig_size)))
    meta = {"orig_size": orig_size, "scale": scale}
    expected = index_select_restore(mask, meta)
    from_numpy = restore_mask(mask.numpy().astype(np.uint8), meta)
    assert from_numpy.shape == orig_size and from_numpy.dtype == np.uint8
    assert np.array_equal(from_numpy, expected.numpy())
    assert torch.equal(restore_mask(mask, meta), expected)  # tensors (any device) keep their path


@pytest.mark.parametrize("classes", [5, 300])
def test_level_1_png_decodes_to_the_same_mask(classes):
    rng = np.random.default_rng(classes)
    mask = np.kron(rng.integers(0, classes, (12, 16)), np.ones((40, 40), np.int64))  # runs, like real masks
    mask = mask.astype(np.uint8 if classes < 256 else np.int32)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(mask))))
    assert decoded.dtype == (np.uint8 if classes < 256 else np.uint16)  # 8-bit up to 255 classes, else 16-bit
    assert np.array_equal(decoded, mask)


def test_clip_boxes_equals_torchvision():
    boxes = torch.tensor([[-5.0, -1.0, 30.0, 12.0], [10.0, 3.0, 200.0, 90.0], [50.0, 70.0, 60.0, 80.0]])
    assert torch.equal(clip_boxes(boxes, 64, 100), clip_boxes_to_image(boxes, (64, 100)))


@pytest.fixture(scope="module")
def images(shapes_root, tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images") / "photos", shapes_root)


def test_written_masks_equal_the_networks_mask_restored_the_earlier_way(trained_run, images, tmp_path):
    weights = trained_run / "best.pt"
    predictor = Predictor(weights, tasks="seg")
    infer_folder(predictor, images, tmp_path / "out", batch_size=4, workers=0, show_progress=False,
                 processes=Processes())
    for name in GOOD:
        meta = {"path": str(images / name)}
        batch = prepare_images([read_image(images / name)], predictor.image_size, [meta])
        network = predictor.runner(batch.images, ["segmentation"])["segmentation"]["mask"][0]
        written = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{name}.png"))
        assert np.array_equal(written, index_select_restore(network, batch.meta[0]).numpy()), name


def test_onnx_inference_loads_no_training_libraries(trained_run, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    export_checkpoint(trained_run / "best.pt", onnx_path, exporter="torchscript")
    code = ("import sys, runpy\n"
            "runpy.run_path('tools/infer.py', run_name='imported')\n"  # the tool's imports, without running it
            "from vision_mtl.inference.predictor import Predictor\n"
            f"Predictor({str(onnx_path)!r}).predict(__import__('numpy').zeros((40, 50, 3), 'uint8'))\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
            f"Predictor({str(trained_run / 'best.pt')!r})\n"
            "print('kornia' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    onnx_modules, kornia_with_checkpoint = proc.stdout.strip().splitlines()[-2:]
    assert onnx_modules == "[]"
    assert kornia_with_checkpoint == "False"  # a checkpoint needs timm and torchvision, not augmentation
