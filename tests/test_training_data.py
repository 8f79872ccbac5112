"""Sandwich sampling, masking, the sample stream and the batches the workers build
(docs/training-recipe.md §2–§4)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from training.config import load_config
from training.data import ClipBatchDataset, SampleStream, StepSampler
from training.videos import read_manifest, sample_frame_indices, scan_videos, write_manifest
from training.masking import batch_masks, block_mask, mask_indices, mask_upper_bound
from training.synthetic import make_frame_folders


def _windows(t: int) -> dict:
    """Every (past, current, future) the sampler produces for a T-frame video (many draws)."""
    rng = np.random.default_rng(0)
    seen: dict[int, set] = {}
    for _ in range(4000):
        p, c, f = sample_frame_indices(t, rng)
        seen.setdefault(c, set()).add((p, f))
    return seen


def test_t20_windows_match_the_recipe_table():
    seen = _windows(20)
    assert sorted(seen) == list(range(6, 14))  # c in [6, 13]
    for c, pairs in seen.items():
        assert {p for p, _ in pairs} == set(range(c - 5, c - 2))              # [c-5, c-3]
        assert {f for _, f in pairs} == set(range(c + 3, min(c + 5, 19) + 1))  # [c+3, min(c+5, 19)]


@pytest.mark.parametrize("t", [90, 170, 180, 330])
def test_bounds_are_float_fractions_truncated(t):
    """0.7*90 = 62.99.. -> 62 in floating point (integer maths would give 63); the same for 170/180/330."""
    seen = _windows(t)
    cs, ce = int(0.3 * t), int(0.7 * t)
    assert ce != 7 * t // 10  # these T are exactly where truncated floats and integer maths disagree
    assert min(seen) == cs and max(seen) == ce - 1
    for c, pairs in seen.items():
        assert all(c - int(0.25 * t) <= p <= c - int(0.15 * t) for p, _ in pairs)
        assert all(c + int(0.15 * t) <= f <= min(c + int(0.25 * t), t - 1) for _, f in pairs)


@pytest.mark.parametrize("t", [1, 2, 3, 7])
def test_fallback_uses_one_frame_three_times(t):
    rng = np.random.default_rng(1)
    draws = [sample_frame_indices(t, rng) for _ in range(200)]
    assert all(p == c == f for p, c, f in draws)
    assert {c for _, c, _ in draws} == set(range(t))


@pytest.mark.parametrize("t", [4, 5, 6])
def test_short_videos_may_reuse_the_current_frame(t):
    rng = np.random.default_rng(2)
    draws = [sample_frame_indices(t, rng) for _ in range(500)]
    assert any(p == c for p, c, _ in draws) and any(f == c for _, c, f in draws)
    assert not all(p == c == f for p, c, f in draws)


def test_zero_frames_is_an_error():
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(0, np.random.default_rng(0))


# ------------------------------------------------------------------------------- masking

@pytest.mark.parametrize("k", [0, 1, 4, 19, 58, 97, 196])
def test_block_mask_reaches_the_exact_count(k):
    mask = block_mask(k, (14, 14), np.random.default_rng(k))
    assert mask.shape == (14, 14) and mask.sum() == k


def test_upper_bound_values_from_the_recipe():
    assert [mask_upper_bound(2 * bs, 196) for bs in (64, 32, 4)] == [3771, 1906, 273]


def test_batch_masks_are_stratified_and_bounded():
    rng = np.random.default_rng(0)
    bs, n = 8, 196
    probs = np.linspace(0.1, 0.5, bs + 1)
    sorted_counts = []
    for _ in range(40):
        masks = batch_masks(2 * bs, (14, 14), rng)
        counts = masks.sum(1)
        assert (counts > 0).sum() == bs  # int(2 bs * 0.5) crops masked, the rest empty
        assert counts.sum() <= mask_upper_bound(2 * bs, n)
        sorted_counts.append(np.sort(counts[counts > 0]))
    sorted_counts = np.array(sorted_counts)
    for i in range(bs):  # the i-th smallest masked crop drew its ratio from the i-th sub-interval
        assert (sorted_counts[:, i] >= int(n * probs[i])).all() and (sorted_counts[:, i] <= int(n * probs[i + 1])).all()
    assert abs(sorted_counts.sum(1).mean() / bs - 0.3 * n) < 3  # mean ratio ~0.3 (58.3 patches per crop)


def test_mask_index_arrays():
    masks = np.zeros((4, 3), dtype=bool)
    masks[1, [0, 2]] = masks[3, 1] = True
    index = mask_indices(masks)
    assert index["aux_rows"].tolist() == [1, 3]
    assert index["mask_index"].tolist() == [3, 5, 10]          # row * 3 + patch
    assert index["aux_mask_index"].tolist() == [0, 2, 4]       # position in the stack of rows 1 and 3
    assert index["mask_weight"].tolist() == [0.5, 0.5, 1.0]


def test_which_crops_are_masked_is_shuffled():
    rng = np.random.default_rng(3)
    hits = sum(batch_masks(8, (14, 14), rng).any(1) for _ in range(300))
    assert hits.min() > 100 and hits.max() < 200  # every crop masked about half of the time


# ------------------------------------------------------------------------------- the stream

def test_stream_visits_every_video_once_per_pass_with_new_orders():
    stream = SampleStream(10, seed=5)
    first = [stream.video(q) for q in range(10)]
    second = [stream.video(q) for q in range(10, 20)]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert SampleStream(10, seed=5).video(13) == second[3]  # a pure function of (seed, position)


def test_step_sampler_splits_a_step_over_ranks_and_accumulation():
    one_gpu = list(StepSampler(2, 4, accum=4, rank=0, world_size=1))
    four_gpus = sorted(i for r in range(4) for i in StepSampler(2, 4, accum=1, rank=r, world_size=4))
    two_gpus = sorted(i for r in range(2) for i in StepSampler(2, 4, accum=2, rank=r, world_size=2))
    assert one_gpu == four_gpus == two_gpus == list(range(8, 16))


def test_scan_and_manifest(tmp_path):
    make_frame_folders(tmp_path / "k", [3, 2, 4], size=(16, 16))
    videos = scan_videos(tmp_path / "k", "kinetics")
    assert videos == ["train/class0/video0000", "train/class1/video0001", "train/class2/video0002"]
    make_frame_folders(tmp_path / "f" / "nested", [2], size=(16, 16), layout="folders")
    assert scan_videos(tmp_path / "f", "folders") == ["nested/video0000"]
    write_manifest(tmp_path / "m.txt", videos)
    assert read_manifest(tmp_path / "m.txt") == videos
    with pytest.raises(FileNotFoundError, match="no 'train' folder"):
        scan_videos(tmp_path / "f", "kinetics")


# ------------------------------------------------------------------------------- batches

@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    make_frame_folders(root, [20, 7, 12, 3, 30, 9], size=(36, 64))  # 16:9 frames: centre 4:3 aux boxes
    return root


def _dataset(frames, **over):
    overrides = [f"{k}={v}" for k, v in over.items()]
    cfg = load_config("training/configs/tiny.yaml", ["data.layout=kinetics", *overrides])
    return ClipBatchDataset(cfg, frames, scan_videos(frames), cfg.optim.batch_size_per_gpu), cfg


def test_cpu_batch_layout_and_pairing(frames):
    ds, cfg = _dataset(frames)
    batch = ds[3]
    b, g, l = 4, cfg.augment.global_size, cfg.augment.local_size
    assert batch.globals.shape == (2 * b, 3, g, g) and batch.globals.dtype == torch.uint8
    assert batch.locals.shape == (cfg.augment.n_local_crops * b, 3, l, l)
    assert batch.masks.shape == (2 * b, (g // 16) ** 2)
    rows = batch.aux_rows
    assert torch.equal(rows, torch.nonzero(batch.masks.any(1)).flatten())
    assert batch.past.shape == batch.future.shape == (len(rows), 3, g, g)


def test_batches_are_pure_functions_of_the_index(frames):
    ds, _ = _dataset(frames)
    a, b = ds[5], _dataset(frames)[0][5]
    assert all(torch.equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    c = ds[6]
    assert not torch.equal(a.globals, c.globals)


def test_aux_views_come_from_the_sample_of_their_masked_row(tmp_path):
    """One-frame videos: past = current = future, so each aux frame must be its row's sample's frame."""
    make_frame_folders(tmp_path, [1] * 8, size=(32, 48))
    cfg = load_config("training/configs/tiny.yaml", ["data.layout=kinetics", "augment.device=gpu"])
    ds = ClipBatchDataset(cfg, tmp_path, scan_videos(tmp_path), 4)
    for g in range(3):
        batch = ds[g]
        rows = batch.aux_rows.tolist()
        assert rows and len(batch.aux_bytes) == 2 * len({r % 4 for r in rows})
        for i, r in enumerate(rows):
            current = batch.current_bytes[r % 4]
            assert torch.equal(batch.aux_bytes[batch.past_frame[i]], current)
            assert torch.equal(batch.aux_bytes[batch.future_frame[i]], current)
        assert batch.aux_boxes.tolist()[0] == [0, 2, 32, 43]  # central 4:3 part of 48x32: w = round(32 * 4/3)
