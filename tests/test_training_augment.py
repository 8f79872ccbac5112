"""Augmentation (docs/training-recipe.md §3): the random parameters, the PIL path, and the batched path against PIL."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from training import augment_gpu as G
from training.augment import (BLUR_PROBS, PIPELINE_GLOBAL1, PIPELINE_GLOBAL2, PIPELINE_LOCAL, center_box,
                              draw_current_plan, draw_photo, random_resized_crop_box)
from training.config import AugmentConfig, load_config
from training.batch import Batch
from training.data import ClipBatchDataset, to_device_batch
from training.videos import scan_videos
from training.synthetic import make_frame_folders, synthetic_frame


@pytest.mark.parametrize("h,w,box", [
    (256, 455, (0, 57, 256, 341)),   # 16:9 -> central 4:3
    (240, 320, (0, 0, 240, 320)),    # 4:3 -> whole frame
    (320, 240, (0, 0, 320, 240)),    # 3:4 -> whole frame
    (455, 256, (57, 0, 341, 256)),   # 9:16 -> central 3:4
])
def test_center_box_is_the_central_4_3_region(h, w, box):
    assert center_box(h, w) == box


def test_random_boxes_fit_and_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = random_resized_crop_box(rng, 256, 455, (0.32, 1.0))
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 455
        areas.append(h * w / (256 * 455))
        ratios.append(w / h)
    assert 0.3 < min(areas) and max(areas) <= 1.0
    assert min(ratios) > 0.74 and max(ratios) < 1.34


def test_plan_of_the_current_frame():
    cfg = AugmentConfig()
    rng = np.random.default_rng(1)
    plans = [draw_current_plan(rng, 256, 455, cfg) for _ in range(400)]
    assert all(p.boxes.shape == (10, 4) and list(p.sizes) == [224, 224] + [96] * 8 for p in plans)
    assert not any(p.flips[:2].any() for p in plans)  # no flip on global crops
    local_flips = np.mean([p.flips[2:].mean() for p in plans])
    assert 0.45 < local_flips < 0.55
    local_areas = [b[2] * b[3] / (256 * 455) for p in plans for b in p.boxes[2:]]
    assert max(local_areas) < 0.33


@pytest.mark.parametrize("blur", ["effective", "intended"])
def test_photometric_probabilities_per_pipeline(blur):
    rng = np.random.default_rng(2)
    n = 20000
    for pipeline in (PIPELINE_GLOBAL1, PIPELINE_GLOBAL2, PIPELINE_LOCAL):
        photo = draw_photo(rng, np.full(n, pipeline), blur)
        assert abs(photo.blur.mean() - BLUR_PROBS[blur][pipeline]) < 0.015
        assert abs(photo.solarize.mean() - (0.2 if pipeline == PIPELINE_GLOBAL2 else 0.0)) < 0.015
        assert abs(photo.jitter.mean() - 0.8) < 0.015 and abs(photo.gray.mean() - 0.2) < 0.015
        assert (np.sort(photo.order, axis=1) == np.arange(4)).all()  # a permutation of the four ops
        lo, hi = photo.factors.min(0), photo.factors.max(0)
        assert np.allclose(lo, [0.6, 0.6, 0.8, -0.1], atol=0.01) and np.allclose(hi, [1.4, 1.4, 1.2, 0.1], atol=0.01)
        assert 0.1 <= photo.sigma.min() and photo.sigma.max() <= 2.0
    assert BLUR_PROBS["effective"] == (0.0, 0.9, 0.5) and BLUR_PROBS["intended"] == (1.0, 0.1, 0.5)


# --------------------------------------------------------------- batched ops against PIL

@pytest.fixture(scope="module")
def image():
    return Image.fromarray(synthetic_frame(np.random.default_rng(0), 256, 455))


def _t(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None]


def _np(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy().astype(int)


def test_crop_resize_matches_pil_within_rounding(image):
    boxes = torch.tensor([[[10, 20, 200, 300], [0, 0, 256, 455], [50, 100, 60, 80], [3, 7, 25, 30]]])
    for size in (224, 96):
        out = G.resize_crops(_t(image), boxes, size, torch.tensor([[False, True, False, True]]))
        for k, (top, left, h, w) in enumerate(boxes[0].tolist()):
            ref = TF.resized_crop(image, top, left, h, w, [size, size], TF.InterpolationMode.BICUBIC, antialias=True)
            if k in (1, 3):
                ref = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            diff = np.abs(np.array(ref).astype(int) - _np(out[:, k]))
            assert diff.max() <= 2 and (diff > 0).mean() < 0.005


@pytest.mark.parametrize("op,ref", [(G._brightness, TF.adjust_brightness), (G._contrast, TF.adjust_contrast),
                                    (G._saturation, TF.adjust_saturation)])
@pytest.mark.parametrize("factor", [0.61, 0.97, 1.39])
def test_blend_ops_equal_pil(image, op, ref, factor):
    small = image.resize((96, 96))
    out = op(_t(small), torch.tensor(factor, dtype=torch.float32).view(1, 1, 1, 1))
    assert (np.array(ref(small, factor)).astype(int) == _np(out)).all()


@pytest.mark.parametrize("factor", [-0.1, -0.037, 0.0, 0.052, 0.0999])
def test_hue_equals_pil(image, factor):
    small = image.resize((96, 96))
    assert (np.array(TF.adjust_hue(small, factor)).astype(int) == _np(G._hue(_t(small), torch.tensor([factor])))).all()


def test_grey_blur_solarize_match_pil(image):
    small = image.resize((96, 96))
    x = _t(small)
    assert (np.array(TF.rgb_to_grayscale(small, 3)).astype(int) == _np(G._luma(x).expand(-1, 3, -1, -1))).all()
    for sigma in (0.1, 0.8, 2.0):
        diff = np.abs(np.array(TF.gaussian_blur(small, [9, 9], [sigma, sigma])).astype(int)
                      - _np(G._gaussian_blur(x, torch.tensor([sigma]))))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.001
    photo = {k: v for k, v in dict(jitter=torch.tensor([False]), order=torch.tensor([[0, 1, 2, 3]]),
                                  factors=torch.ones(1, 4), gray=torch.tensor([False]), blur=torch.tensor([False]),
                                  sigma=torch.ones(1), solarize=torch.tensor([True])).items()}
    assert (np.array(TF.solarize(small, 128)).astype(int) == _np(G.photometric(x, photo))).all()


def test_gpu_path_renders_the_same_batch_as_the_pil_path(tmp_path):
    """Same dataset item through both executors (on CPU tensors here): equal up to rounding."""
    make_frame_folders(tmp_path, [12, 20, 5, 9], size=(72, 128))
    base = ["data.layout=kinetics", "augment.global_size=64", "augment.local_size=32", "augment.n_local_crops=3"]
    cpu_cfg = load_config("training/configs/tiny.yaml", base)
    gpu_cfg = load_config("training/configs/tiny.yaml", base + ["augment.device=gpu"])
    videos = scan_videos(tmp_path)
    device = torch.device("cpu")
    for g in (0, 1):
        a = to_device_batch(ClipBatchDataset(cpu_cfg, tmp_path, videos, 4)[g], device, cpu_cfg.augment)
        b = to_device_batch(ClipBatchDataset(gpu_cfg, tmp_path, videos, 4)[g], device, gpu_cfg.augment)
        assert type(a) is type(b) is Batch  # one schema whichever path rendered it
        assert torch.equal(a.masks, b.masks) and torch.equal(a.aux_rows, b.aux_rows)
        level = 1 / (255 * 0.224)  # one 8-bit level in normalised units
        for key in ("globals", "locals", "past", "future"):
            assert getattr(a, key).shape == getattr(b, key).shape
            diff = (getattr(a, key) - getattr(b, key)).abs()
            assert (diff > 2.5 * level).float().mean() < 0.01, key
            assert diff.mean() < 0.1 * level, key
