"""Batched augmentation on the device (kornia), its presets, mosaic/mixup, the albumentations CPU backend, the preview grid, and JPEG decoding on the training device."""
