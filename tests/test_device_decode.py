"""JPEG decoding on the training device (``data.decode``): the batch it gives is the CPU path's batch (labels
exactly, images within 1 grey level, the only difference being the resize arithmetic); files a device would
decode differently stay with the workers; a file nothing can decode costs its labels, never the step.
"""

from __future__ import annotations

import json
import logging
import re
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import NUM_TRAIN, REPO_ROOT, assert_printed_quotient, one_line
from vision_mtl.data.augment.decode import _resize, decode_pending, decodes_on_device
from vision_mtl.data.loader import build_data
from vision_mtl.data.sample import IGNORE_INDEX, PAD_VALUE, Batch
from vision_mtl.errors import ConfigError
from vision_mtl.training import trainer as training

# (height, width) at data.image_size=64: shrunk (area weights), shrunk portrait, enlarged (bilinear), as is
PLAIN = {"shrink.jpg": (72, 96), "portrait.jpg": (90, 50), "enlarge.jpg": (30, 40), "exact.jpg": (64, 64)}
# files the workers must decode: other formats and JPEGs a device decoder would turn into another image
WORKER_DECODED = {"photo.png": (70, 52), "progressive.jpg": (72, 96), "gray.jpg": (50, 90), "rotated.jpg": (80, 44)}
DEVICE_PATH = ["data.decode=device", "train.augment.backend=device"]
CPU_PATH = ["data.decode=cpu", "train.augment.backend=device"]
# where the deferred JPEGs are decoded: torchvision's CPU decoder, and nvJPEG where a GPU is present
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _pixels(size: tuple[int, int], seed: int) -> np.ndarray:
    """Noise (so a resize that weighs any pixel wrongly shows) under a few flat rectangles."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
        image[y:y + size[0] // 3, x:x + size[1] // 3] = rng.integers(0, 256, 3)
    return image


def _write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    image = Image.fromarray(_pixels(size, seed))
    if path.name == "progressive.jpg":
        image.save(path, quality=90, progressive=True)
    elif path.name == "gray.jpg":
        image.convert("L").save(path, quality=90)
    elif path.name == "rotated.jpg":  # stored sideways; EXIF orientation 6 turns it into `size`
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
    else:
        image.save(path, quality=90)


def write_source(root: Path, files: dict[str, tuple[int, int]]) -> list[str]:
    """``files`` (name -> displayed (h, w)) under ``root/images`` with a COCO file (two boxes with polygons
    each) and a labels CSV; returns the overrides that train and validate on them."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (name, (h, w)) in enumerate(files.items(), start=1):
        _write_image(root / "images" / name, (h, w), i)
        images.append({"id": i, "file_name": name, "height": h, "width": w})
        for j, (x, y, bw, bh) in enumerate([(0.1 * w, 0.2 * h, 0.5 * w, 0.4 * h), (0.55 * w, 0.5 * h, 0.4 * w, 0.45 * h)]):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1 + (i + j) % 2,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
                                "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                     "categories": categories}))
    (root / "labels.csv").write_text("file,label\n" + "".join(f"{n},{('cat', 'dog')[k % 2]}\n"
                                                             for k, n in enumerate(files)))
    source = "[{format: coco, images: images, annotations: instances.json, labels: labels.csv}]"
    return ["data.synthetic=null", f"data.root={root}", f"data.train={source}", f"data.val={source}",
            "data.image_size=64", f"train.batch_size={len(files)}"]


def device_path(device: str) -> list[str]:
    return [*DEVICE_PATH, f"train.device={device}"]


def decoded_on(device: str, pending: Batch, problems) -> Batch:
    """``pending`` decoded on ``device`` as the trainer does, back on the CPU for comparing."""
    moved = pending.to(device)
    decoded = decode_pending(moved, problems)
    assert not decoded.encoded and decoded.images is moved.images and decoded.images.device.type == device
    return decoded.to("cpu")


def first_batch(cfg) -> tuple[Batch, object]:
    """The first training batch (before any decoding on the device) and its loader's dataset."""
    loader = build_data(cfg).train
    return next(iter(loader)), loader.dataset


def by_key(batch: Batch) -> dict[str, int]:
    return {Path(m["key"]).name: i for i, m in enumerate(batch.meta)}


def assert_same_targets(batch: Batch, reference: Batch) -> None:
    """Every target tensor equal, row for row by file (the two loaders may be built separately), and the
    letterbox meta of every image the reference could read."""
    rows, ref_rows = by_key(batch), by_key(reference)
    order = [rows[k] for k in ref_rows]
    assert batch.targets.keys() == reference.targets.keys()
    for task, target in reference.targets.items():
        for name, tensor in target.items():
            assert torch.equal(batch.targets[task][name][order], tensor), (task, name)
    for key, i in ref_rows.items():
        for field in () if reference.meta[i].get("skipped") else ("orig_size", "scale"):
            assert tuple(np.atleast_1d(batch.meta[rows[key]][field])) == tuple(np.atleast_1d(reference.meta[i][field]))


def image_difference(batch: Batch, reference: Batch, keys) -> int:
    rows, ref_rows = by_key(batch), by_key(reference)
    return max(int((batch.images[rows[k]].int() - reference.images[ref_rows[k]].int()).abs().max()) for k in keys)


@pytest.mark.parametrize("device", DEVICES)
def test_device_decoded_batch_matches_the_cpu_path(tmp_path, make_config, device):
    """Same files and seed: the device path's targets and letterbox meta are the CPU path's exactly, and
    its images differ by at most 1 grey level (resize rounding; on the CPU both decoders give the same pixels)."""
    overrides = write_source(tmp_path, PLAIN)
    cpu, _ = first_batch(make_config(*overrides, *CPU_PATH))
    pending, dataset = first_batch(make_config(*overrides, *device_path(device)))
    assert dataset.defer_jpeg and sorted(pending.encoded) == list(range(len(PLAIN)))
    assert (pending.images == PAD_VALUE).all()  # nothing decoded in the workers
    decoded = decoded_on(device, pending, dataset.load_problems)
    assert_same_targets(decoded, cpu)
    assert image_difference(decoded, cpu, PLAIN) <= 1
    assert dataset.problem_counts() == {}


@pytest.mark.parametrize("device", DEVICES)
def test_files_a_device_would_decode_differently_stay_with_the_workers(tmp_path, make_config, device):
    """PNG, progressive, grayscale and EXIF-rotated JPEGs are decoded in the workers, exactly as on the CPU
    path; the plain JPEGs beside them in the batch are left to the device."""
    files = {**PLAIN, **WORKER_DECODED}
    overrides = write_source(tmp_path, files)
    cpu, _ = first_batch(make_config(*overrides, *CPU_PATH))
    pending, dataset = first_batch(make_config(*overrides, *device_path(device)))
    rows = by_key(pending)
    assert {k for k, i in rows.items() if i in pending.encoded} == set(PLAIN)
    assert image_difference(pending, cpu, WORKER_DECODED) == 0  # before decode_pending: from the workers
    decoded = decoded_on(device, pending, dataset.load_problems)
    assert image_difference(decoded, cpu, WORKER_DECODED) == 0
    assert image_difference(decoded, cpu, PLAIN) <= 1
    assert_same_targets(decoded, cpu)
    assert cpu.meta[by_key(cpu)["rotated.jpg"]]["orig_size"] == WORKER_DECODED["rotated.jpg"]


@pytest.mark.parametrize("broken", ["cut file", "undecodable bytes"])
@pytest.mark.parametrize("device", DEVICES)
def test_a_broken_jpeg_loses_its_labels_once_and_the_batch_goes_on(tmp_path, make_config, caplog, device, broken):
    """A JPEG cut short (no end-of-image marker) stays with the workers, whose decoder refuses it, as every
    decoder should (nvJPEG's leniency is not relied on); bytes no decoder can read reaching the device
    (a corrupt file whose header reads) fail there. Either way its sample keeps its place unlabelled for
    every task, it is reported once over two epochs, and the rest of the batch is decoded as usual."""
    overrides = write_source(tmp_path, PLAIN)
    if broken == "cut file":
        truncated = tmp_path / "images" / "shrink.jpg"
        truncated.write_bytes(truncated.read_bytes()[:len(truncated.read_bytes()) // 2])
    cpu, _ = first_batch(make_config(*overrides, *CPU_PATH))
    caplog.set_level(logging.WARNING)
    caplog.clear()  # the CPU path's own report of the file
    loader = build_data(make_config(*overrides, *device_path(device))).train
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        pending = next(iter(loader))
        deferred = {Path(pending.meta[i]["key"]).name: i for i in pending.encoded}
        assert ("shrink.jpg" in deferred) == (broken == "undecodable bytes")
        if broken == "undecodable bytes":
            pending.encoded[deferred["shrink.jpg"]] = torch.tensor([0xFF, 0xD8, 0, 0, 0xFF, 0xD9], dtype=torch.uint8)
        batch = decoded_on(device, pending, loader.dataset.load_problems)
        assert len(batch) == len(PLAIN)
        row = by_key(batch)["shrink.jpg"]
        assert not any(target["valid"][row] for target in batch.targets.values())
        assert (batch.targets["detection"]["labels"][row] == -1).all()
        assert (batch.targets["detection"]["boxes"][row] == 0).all()
        assert (batch.targets["segmentation"]["mask"][row] == IGNORE_INDEX).all()
        assert batch.targets["classification"]["labels"][row] == -1
        assert (batch.images[row] == PAD_VALUE).all()
        if epoch == 0 and broken == "cut file":
            assert_same_targets(batch, cpu)
            assert image_difference(batch, cpu, set(PLAIN) - {"shrink.jpg"}) <= 1
    assert loader.dataset.problem_counts() == {"unreadable image": 1}
    assert len([r for r in caplog.records if "shrink.jpg" in r.getMessage()]) == 1


def test_which_loaders_defer_and_the_albumentations_conflict(make_config, tmp_path):
    """``auto`` defers only on CUDA with the device backend (decided without a GPU: the choice is pure
    config); validation never defers; ``device`` with albumentations is one line naming both settings,
    before any synthetic data is written."""
    assert decodes_on_device(make_config("train.augment.backend=device"), torch.device("cuda"))
    assert not decodes_on_device(make_config("train.augment.backend=albumentations"), torch.device("cuda"))
    assert not decodes_on_device(make_config("train.augment.backend=device"), torch.device("cpu"))
    auto = build_data(make_config("data.decode=auto"))
    assert auto.train.dataset.defer_jpeg is False and auto.val.dataset.defer_jpeg is False
    assert auto.val.dataset.decode_to_fit is True and auto.train.dataset.decode_to_fit is False  # crops zoom in
    device = build_data(make_config(*DEVICE_PATH))
    assert device.train.dataset.defer_jpeg is True and device.val.dataset.defer_jpeg is False
    assert not next(iter(device.val)).encoded
    conflict = ["data.decode=device", "train.augment.backend=albumentations"]
    with pytest.raises(ConfigError) as error:
        build_data(make_config(*conflict))
    assert one_line(error.value) and "data.decode" in str(error.value) and "train.augment.backend" in str(error.value)
    with pytest.raises(ConfigError, match="data.decode=device needs train.augment.backend=device"):
        training.Trainer(make_config(*conflict, f"data.root={tmp_path / 'shapes'}"))
    assert not (tmp_path / "shapes").exists()


def test_training_with_device_decoding_runs_and_its_loss_is_finite(make_config, monkeypatch):
    decoded = []

    def counting(batch, problems=None):
        decoded.append(len(batch.encoded))
        return decode_pending(batch, problems)

    monkeypatch.setattr(training, "decode_pending", counting)
    trainer = training.Trainer(make_config(*DEVICE_PATH, "train.epochs=1", "train.max_steps_per_epoch=2",
                                           "train.plots=false"))
    metrics = trainer.fit()
    assert metrics["epoch"] == 1
    assert decoded == [4, 4]  # every shapes JPEG of both steps went to the device
    assert trainer.last_losses and all(torch.isfinite(v).all() for v in trainer.last_losses.values())


@pytest.mark.parametrize("size, new_size", [((427, 640), (214, 320)), ((97, 61), (40, 25)), ((128, 96), (64, 48)),
                                            ((33, 47), (32, 46))])
def test_area_resize_matches_opencv_inter_area(size, new_size):
    image = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = cv2.resize(image, new_size[::-1], interpolation=cv2.INTER_AREA).astype(int)
    resized = _resize(torch.from_numpy(image).permute(2, 0, 1), *new_size).permute(1, 2, 0).numpy()
    assert resized.shape == expected.shape and np.abs(resized.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("size, new_size", [((30, 40), (48, 64)), ((25, 61), (26, 63))])
def test_enlarging_matches_opencv_bilinear(size, new_size):
    image = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = cv2.resize(image, new_size[::-1], interpolation=cv2.INTER_LINEAR).astype(int)
    resized = _resize(torch.from_numpy(image).permute(2, 0, 1), *new_size).permute(1, 2, 0).numpy()
    assert resized.shape == expected.shape and np.abs(resized.astype(int) - expected).max() <= 1


def test_benchmark_augment_decode_prints_both_pipelines_and_their_ratio(tiny_overrides, monkeypatch, caplog):
    """What the tool prints, not how fast anything is: one epoch of the training split per candidate and
    round, so the ratio is the quotient of the printed throughputs. Run in this process (a subprocess
    would spend its time importing torch)."""
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "augment", "--decode", "--imgsz", "64", "--batch", "16",
                                      "--rounds", "1", *tiny_overrides])
    caplog.set_level(logging.INFO, logger="benchmark")
    runpy.run_path(str(REPO_ROOT / "tools" / "benchmark.py"), run_name="__main__")
    output = "\n".join(r.getMessage() for r in caplog.records if r.name == "benchmark")
    assert "device cpu" in output, output
    values = {key: float(value) for key, value in re.findall(r"^\s+(\w[\w /+-]*?)\s{2,}([0-9.]+)$", output, flags=re.M)}
    assert list(values) == ["images per round", "device decode + augmentation images/s", "albumentations images/s",
                            "ratio device decode / albumentations"], output
    assert values["images per round"] == NUM_TRAIN
    assert_printed_quotient(values["ratio device decode / albumentations"],
                            values["device decode + augmentation images/s"], values["albumentations images/s"], 1e-3)
