"""Reading images to fit the letterbox (``read_image_to_fit``): a JPEG twice the network size or more is
decoded at reduced scale, and the letterboxed sample is the one a full decode gives, up to resampling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vision_mtl.data.image_io import read_image, read_image_to_fit
from vision_mtl.engine.preprocess import prepare_image, read_prepared


def smooth_picture(height: int, width: int) -> np.ndarray:
    """Gradients and a few flat blocks: content a 1/4-scale decode keeps (noise it would not)."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 23.0)], axis=-1)
    image[height // 4:height // 2, width // 3:width // 2] = (200, 30, 90)
    return image.astype(np.uint8)


@pytest.mark.parametrize("name, stored, orientation, shown", [
    ("wide.jpg", (300, 400), None, (300, 400)),        # 400 px at fit 64: decoded at 1/4
    ("rotated.jpg", (300, 400), 6, (400, 300)),        # EXIF turns it upright: full size is (400, 300)
    ("small.jpg", (100, 120), None, (100, 120)),       # less than twice 64: decoded in full
    ("photo.png", (300, 400), None, (300, 400)),       # not a JPEG: decoded in full
])
def test_a_reduced_decode_letterboxes_like_the_full_one(tmp_path, name, stored, orientation, shown):
    path = tmp_path / name
    picture = Image.fromarray(smooth_picture(*stored))
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        picture.save(path, quality=95, exif=exif)
    else:
        picture.save(path, **({"quality": 95} if name.endswith(".jpg") else {}))
    image, full = read_image_to_fit(path, 64)
    assert full == shown
    reduced = name in ("wide.jpg", "rotated.jpg")
    assert (image.shape[0] < shown[0]) == reduced and (image.shape[:2] == shown) != reduced
    fitted = read_prepared(path, 64, {})
    whole = prepare_image(read_image(path), 64, {})
    assert fitted.meta["orig_size"] == whole.meta["orig_size"] == shown
    assert fitted.meta["scale"] == whole.meta["scale"]
    difference = np.abs(fitted.image.astype(int) - whole.image.astype(int))
    if reduced:
        assert difference.mean() < 1.0 and difference.max() <= 24  # DCT scaling vs area averaging
    else:
        assert difference.max() == 0
