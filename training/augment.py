"""Spatial and photometric augmentation (docs/training-recipe.md §3): random parameters, and the CPU (PIL) path.

The random choices of one sample are drawn first, into a `CropPlan` (crop boxes, flips, colour
jitter order and factors, grey, blur sigma, solarize), from a numpy Generator that is a pure
function of (seed, global sample index). Two executors apply a plan:

* `apply_plan_pil` (here): the reference's own ops, torchvision's functional API on PIL images
  (bicubic antialiased crop-resize, ImageEnhance colour ops, PIL HSV hue shift, 9x9 Gaussian blur,
  solarize at 128), run per sample in DataLoader workers;
* `training.augment_gpu`: the same ops as batched tensor maths on the training device.

Crops per sample (never computing the ones the reference throws away):
* current frame: 2 global crops (random boxes, scale 0.32-1, no flip; crop 0 gets pipeline
  "global1", crop 1 "global2") and 8 local crops (scale 0.05-0.32, flip 0.5, pipeline "local");
* past and future frames: one deterministic centre box (the <= 4:3 central region) seen through
  pipelines global1 (slot 0) and global2 (slot 1); only the slots paired with a masked current
  crop are rendered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tcore.constants import IMAGENET_MEAN, IMAGENET_STD
from training.config import AugmentConfig

__all__ = [
    "PIPELINE_GLOBAL1", "PIPELINE_GLOBAL2", "PIPELINE_LOCAL", "BLUR_PROBS", "Photo", "CropPlan",
    "random_resized_crop_box", "center_box", "draw_photo", "draw_current_plan", "draw_aux_photo", "aux_plan",
    "apply_plan_pil", "normalize",
]

PIPELINE_GLOBAL1, PIPELINE_GLOBAL2, PIPELINE_LOCAL = 0, 1, 2
# blur probability per pipeline (global1, global2, local). The reference's GaussianBlur wrapper
# hands 1-p to RandomApply, so what runs is "effective"; "intended" is what its config reads.
BLUR_PROBS = {"effective": (0.0, 0.9, 0.5), "intended": (1.0, 0.1, 0.5)}
SOLARIZE_PROBS = (0.0, 0.2, 0.0)
JITTER_PROB = 0.8
JITTER_STRENGTH = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
GRAY_PROB = 0.2
BLUR_SIGMA = (0.1, 2.0)
BLUR_KERNEL = 9
SOLARIZE_THRESHOLD = 128
RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Photo:
    """Photometric parameters of n crops (arrays of length n, row i = crop i).

    Attributes:
        jitter: (n,) bool, colour jitter applied.
        order: (n, 4) int, the jitter ops in the order applied (0 brightness, 1 contrast,
            2 saturation, 3 hue).
        factors: (n, 4) float, brightness, contrast, saturation factors and the hue shift.
        gray: (n,) bool. blur: (n,) bool. sigma: (n,) float, blur sigma. solarize: (n,) bool.
    """

    jitter: np.ndarray
    order: np.ndarray
    factors: np.ndarray
    gray: np.ndarray
    blur: np.ndarray
    sigma: np.ndarray
    solarize: np.ndarray


@dataclass(frozen=True)
class CropPlan:
    """Every random choice for the crops of one frame.

    Attributes:
        boxes: (n, 4) int64 (top, left, height, width) in frame pixels.
        flips: (n,) bool, horizontal flip after resizing.
        sizes: (n,) int64, output side of each crop.
        photo: the photometric parameters of the n crops.
    """

    boxes: np.ndarray
    flips: np.ndarray
    sizes: np.ndarray
    photo: Photo


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box: 10 tries of area x U(scale) with log-uniform aspect, else centre.

    Returns:
        (top, left, h, w).
    """
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return center_box(height, width)


def center_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The fallback box: the whole frame if 3/4 <= W/H <= 4/3, else its central 4:3 (or 3:4) part."""
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_photo(rng: np.random.Generator, pipelines: np.ndarray, blur: str) -> Photo:
    """Photometric parameters for crops that go through `pipelines` (PIPELINE_* per crop)."""
    n = len(pipelines)
    b, c, s, h = JITTER_STRENGTH
    factors = np.stack([rng.uniform(1 - b, 1 + b, n), rng.uniform(1 - c, 1 + c, n),
                        rng.uniform(1 - s, 1 + s, n), rng.uniform(-h, h, n)], axis=1)
    blur_p = np.asarray(BLUR_PROBS[blur])[pipelines]
    solarize_p = np.asarray(SOLARIZE_PROBS)[pipelines]
    return Photo(
        jitter=rng.random(n) < JITTER_PROB,
        order=np.stack([rng.permutation(4) for _ in range(n)]).reshape(n, 4),
        factors=factors,
        gray=rng.random(n) < GRAY_PROB,
        blur=rng.random(n) < blur_p,
        sigma=rng.uniform(*BLUR_SIGMA, n),
        solarize=rng.random(n) < solarize_p,
    )


def draw_current_plan(rng: np.random.Generator, height: int, width: int, cfg: AugmentConfig) -> CropPlan:
    """Plan for the current frame: 2 global crops (no flip) then `cfg.n_local_crops` local crops."""
    n_local = cfg.n_local_crops
    boxes = [random_resized_crop_box(rng, height, width, cfg.global_scale) for _ in range(2)]
    boxes += [random_resized_crop_box(rng, height, width, cfg.local_scale) for _ in range(n_local)]
    flips = np.concatenate([np.zeros(2, dtype=bool), rng.random(n_local) < 0.5])
    pipelines = np.array([PIPELINE_GLOBAL1, PIPELINE_GLOBAL2] + [PIPELINE_LOCAL] * n_local)
    sizes = np.array([cfg.global_size] * 2 + [cfg.local_size] * n_local, dtype=np.int64)
    return CropPlan(np.asarray(boxes, dtype=np.int64), flips, sizes, draw_photo(rng, pipelines, cfg.blur))


def draw_aux_photo(rng: np.random.Generator, cfg: AugmentConfig) -> Photo:
    """Photometric parameters of a past or future frame's slots 0 (global1) and 1 (global2)."""
    return draw_photo(rng, np.array([PIPELINE_GLOBAL1, PIPELINE_GLOBAL2]), cfg.blur)


def aux_plan(height: int, width: int, photo: Photo, cfg: AugmentConfig) -> CropPlan:
    """Plan of a past or future frame: the fixed centre box in both slots, no flip."""
    box = center_box(height, width)
    return CropPlan(np.asarray([box, box], dtype=np.int64), np.zeros(2, dtype=bool),
                    np.array([cfg.global_size] * 2, dtype=np.int64), photo)


def _photometric_pil(img, photo: Photo, i: int):
    """Colour jitter (random order) -> grey -> blur -> solarize on a PIL image, as the reference."""
    import torchvision.transforms.functional as TF

    if photo.jitter[i]:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for op in photo.order[i]:
            img = ops[op](img, float(photo.factors[i, op]))
    if photo.gray[i]:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if photo.blur[i]:
        sigma = float(photo.sigma[i])
        img = TF.gaussian_blur(img, [BLUR_KERNEL, BLUR_KERNEL], [sigma, sigma])
    if photo.solarize[i]:
        img = TF.solarize(img, SOLARIZE_THRESHOLD)
    return img


def apply_plan_pil(image, plan: CropPlan, rows: list[int] | range | None = None) -> list[torch.Tensor]:
    """Render crops of one frame with PIL, exactly the reference's torchvision calls.

    Args:
        image: the frame, a PIL RGB image.
        plan: its plan.
        rows: which crops of the plan to render (default all).

    Returns:
        list of (3, S, S) uint8 tensors (not normalised: `ToTensor` + `Normalize` happen on the
        training device, see `normalize`).
    """
    import torchvision.transforms.functional as TF
    from PIL import Image

    out = []
    for i in range(len(plan.boxes)) if rows is None else rows:
        top, left, h, w = (int(v) for v in plan.boxes[i])
        size = int(plan.sizes[i])
        crop = TF.resized_crop(image, top, left, h, w, [size, size],
                               interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        if plan.flips[i]:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = _photometric_pil(crop, plan.photo, i)
        out.append(torch.from_numpy(np.array(crop, dtype=np.uint8)).permute(2, 0, 1))  # (3, S, S)
    return out


_NORMALIZE: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, 3, H, W) in [0, 255] -> ImageNet-normalised float (ToTensor + Normalize)."""
    device = images.device
    if device not in _NORMALIZE:  # built once per device: a host-to-device copy would wait for the GPU
        _NORMALIZE[device] = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).mul(255).to(device),
                              torch.tensor(IMAGENET_STD).view(1, 3, 1, 1).mul(255).to(device))
    mean, std = _NORMALIZE[device]
    out = ((images.float() - mean) / std).to(dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
