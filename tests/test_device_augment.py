"""Device augmentation on kornia: boxes, masks and images stay consistent under every geometric op and
the presets; padding rows, ignore pixels and unlabelled samples survive; the seed fixes the batch."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from conftest import assert_printed_quotient, one_line, run_tool
from vision_mtl.config import AugmentConfig, load_config
from vision_mtl.data.augment.albu import AlbumentationsAugment
from vision_mtl.data.augment.boxes import clip_quads
from vision_mtl.data.augment.presets import CPU_BACKEND, PRESETS, resolve_augment, resolve_backend
from vision_mtl.data.augment.preview import augment_preview
from vision_mtl.data.augment.device import DeviceAugment
from vision_mtl.data.loader import build_data
from vision_mtl.data.sample import IGNORE_INDEX, Batch, Sample, collate
from vision_mtl.errors import ConfigError

SIZE = 96
CONTENT = 200  # every image pixel that is not letterbox padding (padding is 0, like kornia's fill)
UNLABELLED_CONTENT = (255, 200, 0)  # the background of the sample without segmentation, for mosaic tiles
NO_DETECTION, NO_SEGMENTATION = 4, 5  # samples unlabelled for one task

# One transform at a time, then the presets.
GEOMETRIC = {
    "crop": {"crop": 1.0, "crop_scale": [0.3, 0.8]},
    "hflip": {"hflip": 1.0},
    "rotate": {"affine": 1.0, "rotate": 30.0},
    "shear": {"affine": 1.0, "shear": 20.0},
    "translate": {"affine": 1.0, "translate": 0.3},
    "scale": {"affine": 1.0, "scale": [0.6, 1.4]},
    "mosaic": {"mosaic": 1.0},
}
CASES = {name: AugmentConfig(preset="none", **keys) for name, keys in GEOMETRIC.items()}
# The presets without their mixes: a mosaic's objects shrunk to ~10 px and then zoomed 2x by a crop
# compound a pixel of nearest resampling each time, beyond IoU 0.9; and mixup's faded partner objects
# are not in the dominant image's mask.
CASES |= {preset: AugmentConfig(preset=preset, mosaic=0.0, mixup=0.0) for preset in ("default", "strong")}
MIXING = {"mixup": AugmentConfig(preset="none", mixup=1.0),
          **{f"{preset} mixing": AugmentConfig(preset=preset) for preset in ("default", "strong")}}


def _batch() -> Batch:
    return collate(_samples(), ["classification", "detection", "segmentation"])


def _samples() -> list[Sample]:
    """Six samples with two or three rectangles each (the j-th of sample i has label 3i + j, unique in the
    batch so mosaics keep one object per label, drawn as mask value label + 1); sample 0 is
    letterboxed (bottom rows: image 0, mask ignore); samples 4 and 5 lack detection and segmentation labels."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(6):
        image = np.full((SIZE, SIZE, 3), UNLABELLED_CONTENT if i == NO_SEGMENTATION else CONTENT, np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        boxes = []
        for j, (cx, cy) in enumerate([(24, 24), (70, 26), (48, 72)][: 2 + i % 2]):
            w, h = rng.integers(26, 36, 2)
            x1, y1 = cx - w // 2 + rng.integers(-3, 4), cy - h // 2 + rng.integers(-3, 4)
            mask[y1:y1 + h, x1:x1 + w] = 3 * i + j + 1
            image[y1:y1 + h, x1:x1 + w] = (60 * j + 40, 120, 250 - 60 * j)
            boxes.append([x1, y1, x1 + w, y1 + h])
        if i == 0:
            image[64:] = 0
            mask[64:] = IGNORE_INDEX
            boxes = boxes[:2]
            mask[mask == 3] = 0
        boxes = np.array(boxes, np.float32)
        samples.append(Sample(image, boxes=None if i == NO_DETECTION else boxes,
                              labels=None if i == NO_DETECTION else 3 * i + np.arange(len(boxes)),
                              mask=None if i == NO_SEGMENTATION else mask, label=i % 3))
    return samples


def _augment(cfg: AugmentConfig, batch: Batch, seed: int = 0) -> Batch:
    torch.manual_seed(seed)
    return DeviceAugment(cfg)(batch)


def _mask_box(mask: torch.Tensor, value: int) -> torch.Tensor | None:
    ys, xs = torch.nonzero(mask == value, as_tuple=True)
    if not len(xs):
        return None
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def _albumentations(cfg: AugmentConfig, seed: int = 0) -> Batch:
    """The batch as the albumentations backend's workers and then DeviceAugment make it."""
    augment = AlbumentationsAugment(cfg, SIZE)
    samples = [augment(sample, seed * 100 + i) for i, sample in enumerate(_samples())]
    return _augment(cfg, collate(samples, ["classification", "detection", "segmentation"]), seed)


@pytest.mark.parametrize("backend", ["device", "albumentations"])
@pytest.mark.parametrize("case", CASES)
def test_each_objects_mask_box_matches_its_transformed_box(case, backend):
    if backend == "albumentations" and case == "mosaic":
        pytest.skip("mosaic is DeviceAugment's with either backend")
    batch, cfg = _batch(), dataclasses.replace(CASES[case], backend=backend)
    moved = 0
    for seed in range(3):
        out = _albumentations(cfg, seed) if backend == "albumentations" else _augment(cfg, batch, seed)
        det, seg = out.targets["detection"], out.targets["segmentation"]
        for b in range(len(batch)):
            if not (det["valid"][b] and seg["valid"][b]):
                continue
            for box, label in zip(det["boxes"][b], det["labels"][b]):
                if label < 0 or label // 3 == NO_SEGMENTATION:  # a mosaic tile without segmentation
                    continue
                mask_box = _mask_box(seg["mask"][b], int(label) + 1)
                assert mask_box is not None, f"{case}: box {box.tolist()} kept, its object gone from the mask"
                iou = box_iou(box[None], mask_box[None]).item()
                what = f"{case} seed {seed} sample {b}: box {box.tolist()} vs mask {mask_box.tolist()}"
                if backend == "albumentations" and (box.min() == 0 or box[2:].max() == SIZE):
                    # albumentations clips the box of a rotated box's corners: loose, never cutting the object
                    assert (box[:2] <= mask_box[:2] + 1).all() and (box[2:] >= mask_box[2:] - 1).all(), what
                else:
                    assert iou >= 0.9, what
                assert box.min() >= 0 and box[2] <= SIZE and box[3] <= SIZE  # clipped
            moved += not torch.equal(det["boxes"][b], batch.targets["detection"]["boxes"][b])
    assert moved, f"{case} moved no box"


def test_boxes_keeping_too_little_area_are_dropped():
    """Translation keeps every object's size, so the mask shows how much of each is left in the image."""
    batch, cfg = _batch(), AugmentConfig(preset="none", affine=1.0, translate=0.4, min_box_area=0.25)
    dropped = kept_cut = 0
    for seed in range(6):
        out = _augment(cfg, batch, seed)
        det, seg = out.targets["detection"], out.targets["segmentation"]
        for b in range(len(batch)):
            if b in (NO_DETECTION, NO_SEGMENTATION):
                continue
            for j, before in enumerate(batch.targets["detection"]["labels"][b].tolist()):
                if before < 0:
                    continue
                area = (batch.targets["segmentation"]["mask"][b] == before + 1).sum().item()
                left = (seg["mask"][b] == before + 1).sum().item() / area
                if det["labels"][b, j] < 0:
                    dropped += 1
                    assert left < 0.3 and det["boxes"][b, j].eq(0).all()
                else:
                    kept_cut += left < 0.9
                    assert left > 0.2
    assert dropped and kept_cut, "translation neither dropped nor cut a box in 6 batches"


def test_a_rotated_box_cut_by_the_border_keeps_the_box_of_its_visible_part():
    """A diamond over the image's top-left corner: what is left is the triangle (0,0), (10,0), (0,10),
    not the clipped box of the diamond's corners ([0, 0, 15, 15])."""
    diamond = torch.tensor([[[[-5.0, -25.0], [15.0, -5.0], [-5.0, 15.0], [-25.0, -5.0]]]])
    boxes, kept = clip_quads(diamond, (100, 100))
    torch.testing.assert_close(boxes, torch.tensor([[[0.0, 0.0, 10.0, 10.0]]]))
    torch.testing.assert_close(kept, torch.tensor([[100.0 / 1600.0]]))


def test_flipping_twice_is_the_identity():
    batch = _batch()
    flip = DeviceAugment(AugmentConfig(preset="none", hflip=1.0))
    once = flip(batch)
    once.images = (once.images * 255).round().to(torch.uint8)
    twice = flip(once)
    torch.testing.assert_close(twice.images, batch.images.float() / 255)
    assert not torch.equal(once.images, batch.images)
    for task, target in batch.targets.items():
        for key, value in target.items():
            assert torch.equal(twice.targets[task][key], value), f"{task}.{key}"


@pytest.mark.parametrize("preset", ["light", "default", "strong"])
def test_same_seed_gives_the_same_batch(preset):
    batch = _batch()
    first, again, other = (_augment(AugmentConfig(preset=preset), batch, seed) for seed in (7, 7, 8))
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images, other.images)
    for task, target in first.targets.items():
        for key, value in target.items():
            assert torch.equal(again.targets[task][key], value), f"{task}.{key}"


@pytest.mark.parametrize("case", CASES | MIXING)
def test_padding_rows_stay_padding_and_ignore_stays_ignore(case):
    """Mixes add rows; a sample's own rows come first and each tile or partner keeps its row order."""
    batch = _batch()
    padding = batch.targets["detection"]["labels"] < 0
    rows = padding.shape[1]
    assert padding[0].any() and padding[NO_DETECTION].all()
    for seed in range(3):
        out = _augment((CASES | MIXING)[case], batch, seed)
        labels, boxes = out.targets["detection"]["labels"], out.targets["detection"]["boxes"]
        assert (labels[:, :rows][padding] == -1).all() and boxes[:, :rows][padding].eq(0).all()
        assert boxes[labels < 0].eq(0).all()
        real = (labels >= 0).nonzero()
        assert (labels[labels >= 0] % 3 == real[:, 1] % rows).all()  # object j of its image stays in row j
        mask = out.targets["segmentation"]["mask"]
        assert set(mask.unique().tolist()) <= {*range(19), IGNORE_INDEX}
        # Geometric ops only: letterbox padding and outside-the-image pixels are the dark ones.
        if case in GEOMETRIC:
            brightness = out.images.mean(dim=1)
            valid = out.targets["segmentation"]["valid"]
            assert (mask[(brightness < 0.05) & valid.view(-1, 1, 1)] == IGNORE_INDEX).all()
            assert (mask[(brightness > 0.7) & valid.view(-1, 1, 1)] != IGNORE_INDEX).all()


@pytest.mark.parametrize("case", ["default", "strong", "rotate"])
def test_samples_lacking_a_task_stay_unlabelled(case):
    batch = _batch()
    out = _augment(CASES[case], batch)
    for task, target in batch.targets.items():
        assert torch.equal(out.targets[task]["valid"], target["valid"])
    assert (out.targets["detection"]["labels"][NO_DETECTION] == -1).all()
    assert (out.targets["segmentation"]["mask"][NO_SEGMENTATION] == IGNORE_INDEX).all()
    assert torch.equal(out.targets["classification"]["labels"], batch.targets["classification"]["labels"])


def test_photometric_ops_change_only_the_images():
    batch = _batch()
    cfg = AugmentConfig(preset="none", brightness=0.4, contrast=0.4, saturation=0.5, hue=0.1, blur=1.0,
                        noise=1.0, noise_std=0.1, grayscale=0.5)
    out = _augment(cfg, batch)
    assert out.images.dtype == torch.float32 and 0 <= out.images.min() and out.images.max() <= 1
    assert not torch.equal(out.images, batch.images.float() / 255)
    assert torch.equal(out.targets["segmentation"]["mask"], batch.targets["segmentation"]["mask"])
    assert torch.equal(out.targets["detection"]["boxes"], batch.targets["detection"]["boxes"])
    grey = _augment(AugmentConfig(preset="none", grayscale=1.0), batch)
    assert torch.allclose(grey.images[:, 0], grey.images[:, 1]) and torch.allclose(grey.images[:, 1], grey.images[:, 2])


def test_preset_none_only_converts_to_float():
    batch = _batch()
    out = _augment(AugmentConfig(preset="none"), batch)
    torch.testing.assert_close(out.images, batch.images.float() / 255)
    assert torch.equal(out.targets["detection"]["boxes"], batch.targets["detection"]["boxes"])


def test_preset_fills_unset_keys_and_explicit_keys_win():
    assert resolve_augment(AugmentConfig()) == PRESETS["light"]
    params = resolve_augment(load_config(None, ["train.augment.preset=strong", "train.augment.rotate=0",
                                                "train.augment.crop_scale=[0.5, 1]"]).train.augment)
    assert params == {**PRESETS["strong"], "rotate": 0.0, "crop_scale": [0.5, 1.0]}
    assert PRESETS["light"]["hflip"] == 0.5 and PRESETS["light"]["brightness"] == PRESETS["light"]["contrast"] == 0.2


@pytest.mark.parametrize("key, value, message", [
    ("hflip", 1.5, "train.augment.hflip=1.5 must be in [0, 1]"),
    ("scale", [1.2, 0.8], "train.augment.scale=[1.2, 0.8] must be [min, max] with 0 < min <= max"),
    ("rotate", -5.0, "train.augment.rotate=-5.0 must be >= 0"),
    ("crop_scale", [0.5, 1.5], "train.augment.crop_scale=[0.5, 1.5] must be at most 1.0"),
    ("hue", 0.6, "train.augment.hue=0.6 must be at most 0.5"),
    ("mosaic", 1.5, "train.augment.mosaic=1.5 must be in [0, 1]"),
    ("mix_off_epochs", -1, "train.augment.mix_off_epochs=-1 must be >= 0"),
])
def test_bad_augment_values_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError) as err:
        DeviceAugment(AugmentConfig(preset="default", **{key: value}))
    assert one_line(err.value) and str(err.value) == message


def test_preview_draws_every_sample_of_the_batches(make_config):
    cfg = make_config("train.augment.preset=strong")
    grid = augment_preview(cfg, batches=2)
    tile = cfg.data.image_size + 2  # make_grid's 2 px padding
    assert grid.dtype == np.uint8 and grid.shape == (2 + tile, 2 + 8 * tile, 3)  # 2 batches of 4: one row


def test_visualize_augment_tool_writes_a_png_or_one_line_error(tiny_overrides, tmp_path):
    out = tmp_path / "aug.png"
    done = run_tool("visualize_augment.py", "--out", str(out), *tiny_overrides, "train.augment.preset=default")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and done.stdout.strip() == f"wrote {out}"
    written = out.read_bytes()
    bad = run_tool("visualize_augment.py", "--out", str(out), "--force", *tiny_overrides, "train.augment.hflip=2")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: train.augment.hflip=2.0 must be in [0, 1]"
    assert out.read_bytes() == written


def _mixup_partner(out: torch.Tensor, images: torch.Tensor, b: int) -> int | None:
    """The image ``out`` [3, H, W] is a blend of ``images[b]`` with (None when it is ``images[b]`` itself)."""
    if torch.allclose(out, images[b]):
        return None
    residuals = []
    for c in range(len(images)):
        step = images[b] - images[c]
        lam = ((out - images[c]) * step).sum() / step.square().sum().clamp(min=1e-12)
        residuals.append((out - images[c] - lam * step).abs().max().item())
    return int(np.argmin(residuals))


def test_mixup_blends_pairs_and_a_tasks_valid_is_the_and_of_both():
    batch = _batch()
    images, rows = batch.images.float() / 255, batch.targets["detection"]["labels"].shape[1]
    lost = 0
    for seed in range(4):
        out = _augment(MIXING["mixup"], batch, seed)
        for b in range(len(batch)):
            partner = _mixup_partner(out.images[b], images, b)
            both = [b] if partner is None else [b, partner]
            for task, target in batch.targets.items():
                assert out.targets[task]["valid"][b] == target["valid"][both].all(), f"{task} sample {b} seed {seed}"
                lost += out.targets[task]["valid"][b] < target["valid"][b]
            labels = out.targets["detection"]["labels"][b]
            assert torch.equal(labels[:rows], batch.targets["detection"]["labels"][b])
            if partner is not None:
                assert torch.equal(labels[rows:], batch.targets["detection"]["labels"][partner])
                assert torch.equal(out.targets["segmentation"]["mask"][b], batch.targets["segmentation"]["mask"][b])
        assert torch.equal(out.targets["classification"]["labels"], batch.targets["classification"]["labels"])
    assert lost, "no sample was mixed with one lacking a task in 4 batches"


def test_mosaic_tiles_without_segmentation_are_ignore_and_classification_unlabelled():
    batch = _batch()
    cfg = AugmentConfig(preset="none", mosaic=1.0)
    unlabelled_pixels = 0
    for seed in range(4):
        out = _augment(cfg, batch, seed)
        seg, cls = out.targets["segmentation"], out.targets["classification"]
        red, blue = out.images[:, 0], out.images[:, 2]
        from_unlabelled = (red > 0.95) & (blue < 0.05) & seg["valid"].view(-1, 1, 1)
        assert (seg["mask"][from_unlabelled] == IGNORE_INDEX).all()
        unlabelled_pixels += from_unlabelled.sum().item()
        assert seg["valid"].all()  # any labelled tile keeps the mosaic labelled
        assert not cls["valid"].any() and (cls["labels"] == -1).all()
        assert out.targets["detection"]["labels"].shape[1] == 4 * batch.targets["detection"]["labels"].shape[1]
    assert unlabelled_pixels > 100


def test_mixing_is_off_in_the_last_epochs():
    batch = _batch()
    augment = DeviceAugment(AugmentConfig(preset="none", mosaic=1.0, mixup=1.0, mix_off_epochs=2))
    augment.set_epoch(7, 10)
    assert not torch.equal(augment(batch).images, batch.images.float() / 255)
    augment.set_epoch(8, 10)
    out = augment(batch)
    torch.testing.assert_close(out.images, batch.images.float() / 255)
    for task, target in batch.targets.items():
        for key, value in target.items():
            assert torch.equal(out.targets[task][key], value), f"{task}.{key}"


def test_with_the_albumentations_backend_the_device_only_converts_and_mixes():
    batch = _batch()
    cfg = AugmentConfig(preset="strong", mosaic=0.0, mixup=0.0, backend="albumentations")
    out = _augment(cfg, batch)
    torch.testing.assert_close(out.images, batch.images.float() / 255)
    for task, target in batch.targets.items():
        for key, value in target.items():
            assert torch.equal(out.targets[task][key], value), f"{task}.{key}"
    mixed = _augment(dataclasses.replace(cfg, mosaic=1.0), batch)
    assert mixed.targets["detection"]["labels"].shape[1] == 4 * batch.targets["detection"]["labels"].shape[1]
    assert not (mixed.targets["classification"]["valid"]).any()


def test_albumentations_draws_follow_the_seed_and_keep_unlabelled_samples_unlabelled():
    augment, samples = AlbumentationsAugment(AugmentConfig(preset="strong"), SIZE), _samples()
    first, again, other = (augment(samples[1], seed) for seed in (3, 3, 4))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.boxes, again.boxes)
    assert not np.array_equal(first.image, other.image)
    assert augment(samples[NO_DETECTION], 0).boxes is None and augment(samples[NO_SEGMENTATION], 0).mask is None


def test_backend_auto_is_device_on_cuda_and_the_measured_faster_one_on_cpu():
    assert resolve_backend(AugmentConfig(), torch.device("cuda")) == "device"
    assert resolve_backend(AugmentConfig(), torch.device("cpu")) == CPU_BACKEND
    assert resolve_backend(AugmentConfig(backend="albumentations"), torch.device("cuda")) == "albumentations"


def test_albumentations_loader_augments_by_seed_epoch_and_index(make_config):
    """Two loaders of one config give the same augmented batches, another epoch other ones, and a
    loader resumed after one batch gives the uninterrupted run's second batch."""
    cfg = make_config("train.augment.backend=albumentations", "train.augment.preset=strong", "train.batch_size=2")
    first, second, other = (build_data(cfg).train for _ in range(3))
    batches = [batch.images for batch, _ in zip(first, range(2))]
    assert torch.equal(next(iter(second)).images, batches[0])
    plain = torch.stack([torch.from_numpy(first.dataset[m["index"]].image).permute(2, 0, 1)
                         for m in next(iter(first)).meta])
    assert not torch.equal(plain, batches[0])  # the workers augmented
    second.sampler.skip(2)
    assert torch.equal(next(iter(second)).images, batches[1])
    other.sampler.set_epoch(1)
    assert not torch.equal(next(iter(other)).images, batches[0])


def test_benchmark_augment_prints_both_backends_and_their_ratio():
    """What the tool prints, not how fast anything is (figures: docs/benchmarks.md): one round, so the
    ratio must be the quotient of the printed throughputs."""
    proc = run_tool("benchmark.py", "augment", "--imgsz", "64", "--batch", "2", "--rounds", "1")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    values = {key: float(value) for key, value in re.findall(r"^\s+(\w[\w /-]*?)\s{2,}([0-9.]+)$", output, flags=re.M)}
    assert list(values) == ["device images/s", "albumentations images/s", "ratio device / albumentations"], output
    assert_printed_quotient(values["ratio device / albumentations"], values["device images/s"],
                            values["albumentations images/s"], 1e-3)


def test_the_trainers_augmenter_resolves_backend_auto_for_its_device():
    batch, cfg = _batch(), AugmentConfig(preset="none", hflip=1.0)
    assert torch.equal(DeviceAugment(cfg, "cpu")(batch).images, batch.images.float() / 255) == (CPU_BACKEND != "device")
    assert not torch.equal(DeviceAugment(cfg)(batch).images, batch.images.float() / 255)
