"""Numbers every part of the project shares, in one place (no imports: the torch-free registry
and the training recipe read them too).

`IMAGENET_MEAN` / `IMAGENET_STD`: the RGB normalisation of T-CoRe's training and of its released
weights (`tcore.weights.Preprocessing`, the backbones' default `mean` / `std`, `training.augment`).
The accepted frame-file extensions are `tcore.io.IMAGE_SUFFIXES`.
"""
from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, images in [0, 1]
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
