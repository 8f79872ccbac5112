"""Front ends: labels in and out exactly as the paper's evaluation converts them, presets, and one
clear error per bad input. (The engine itself is specified in test_propagation_engine.py.)"""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import tcore
from tcore.demo import make_demo_clip
from tcore.propagation import PRESETS, labels as L
from tcore.propagation.encoder import FrameEncoder
from tcore.propagation.presets import working_size


SMALL = (64, 96)  # working size of the synthetic clip: a 4x6 grid keeps these tests fast


@pytest.fixture(scope="module")
def clip():
    frames, masks = make_demo_clip(n_frames=6, size=(64, 96), seed=1)
    return frames, masks


# ----------------------------------------------------------------------------- label conversion

def test_first_mask_soft_onehot_equals_opencv_nearest_then_bilinear_downscale():
    rng = np.random.default_rng(0)
    ids = rng.choice(np.array([0, 3, 7], dtype=np.uint8), size=(120, 213))
    classes = np.array([0, 3, 7], dtype=np.uint8)
    work = (80, 144)
    ours = L.soft_onehot_at_grid(ids, classes, work, 16).numpy()  # (C, 5, 9)
    resized = cv2.resize(ids, (work[1], work[0]), interpolation=cv2.INTER_NEAREST)
    onehot = np.stack([(resized == c).astype(np.float32) for c in classes], -1)
    ref = cv2.resize(onehot, (work[1] // 16, work[0] // 16), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(ours, ref.transpose(2, 0, 1))
    assert set(np.unique(ours)) <= {0, 0.25, 0.5, 0.75, 1}


def test_first_mask_soft_onehot_patch14_uses_the_two_centre_pixels():
    ids = np.zeros((28, 28), dtype=np.uint8)
    ids[6, 6] = ids[7, 7] = 1  # two of the four centre pixels of cell (0, 0)
    ids[5, 5] = 1  # not a centre pixel
    soft = L.soft_onehot_at_grid(ids, np.array([0, 1], dtype=np.uint8), (28, 28), 14)
    assert soft[1, 0, 0] == 0.5 and soft[1].sum() == 0.5


def test_a_later_mask_covers_each_cell_with_the_share_of_its_pixels_after_opencv_nearest():
    rng = np.random.default_rng(1)
    ids = rng.choice(np.array([0, 3, 7, 9], dtype=np.uint8), size=(120, 213))  # 9: an id of no channel
    classes = np.array([0, 3, 7], dtype=np.uint8)
    work = (80, 144)
    ours = L.soft_cover_at_grid(ids, classes, work, 16).numpy()  # (C, 5, 9)
    resized = cv2.resize(ids, (work[1], work[0]), interpolation=cv2.INTER_NEAREST)
    onehot = np.stack([(resized == c).astype(np.float32) for c in classes])  # (C, 80, 144)
    np.testing.assert_array_equal(ours, onehot.reshape(3, 5, 16, 9, 16).mean(axis=(2, 4)))


# Working sides the presets give (VIP's multiples of 64, DAVIS 480/880, JHMDB 320, patch-14 floors,
# the default rule's long sides of common videos): the output side of the first-mask resize and the
# input side of the resize back to the original frames.
PRESET_SIDES = sorted({*range(64, 897, 64), 308, 320, 448, 476, 480, 840, 848, 854, 864, 868, 880})


def _opencv_nearest(n_in: int, n_out: int) -> np.ndarray:
    """The source index of each output pixel of cv2.resize(INTER_NEAREST) along one axis."""
    src = np.arange(n_in, dtype=np.uint16)[None]  # (1, n_in): the pixel value is its index
    return cv2.resize(src, (n_out, 1), interpolation=cv2.INTER_NEAREST)[0].astype(np.int64)


def test_nearest_indices_equal_opencv_for_every_input_size_and_preset_side():
    mismatches = []
    for side in PRESET_SIDES:
        for n in range(1, 2001):
            for n_in, n_out in ((n, side), (side, n)):  # frames -> working size, and back
                if not np.array_equal(L.opencv_nearest_indices(n_out, n_in), _opencv_nearest(n_in, n_out)):
                    mismatches.append((n_in, n_out))
    assert mismatches == []


def test_nearest_indices_are_not_the_exact_integer_floor():
    # 576 -> 448 (VIP, 1024x576 frames): OpenCV's double product i * (1 / (448 / 576)) rounds just
    # below 216 at i = 168, so OpenCV reads row 215; (i * 576) // 448 would say 216
    opencv = _opencv_nearest(576, 448)
    assert (opencv[168], opencv[119]) == (215, 152)
    np.testing.assert_array_equal(L.opencv_nearest_indices(448, 576), opencv)
    assert not np.array_equal((np.arange(448) * 576) // 448, opencv)


def test_vip_first_frame_labels_of_a_1024x576_clip_equal_opencv_then_official_downscale():
    work = working_size((576, 1024), PRESETS["vip"], 16)
    assert work == (448, 880)
    ids = np.zeros((576, 1024), dtype=np.uint8)
    ids[216:] = 5  # a class boundary between source rows 215 and 216: working row 168 (cell 10) reads 215
    ids[:, 600:] += 3  # and a vertical one, so three classes meet
    classes = np.array([0, 3, 5, 8], dtype=np.uint8)
    ours = L.soft_onehot_at_grid(ids, classes, work, 16).numpy()  # (C, 28, 55)
    resized = cv2.resize(ids, (work[1], work[0]), interpolation=cv2.INTER_NEAREST)
    onehot = np.stack([(resized == c).astype(np.float32) for c in classes], -1)  # (448, 880, C)
    official = cv2.resize(onehot, (work[1] // 16, work[0] // 16), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(ours, official.transpose(2, 0, 1))
    assert ours[0, 10, 0] == 1.0  # cell row 10 reads source rows 214 and 215: still class 0


class _Stub(torch.nn.Module):
    """What FrameEncoder reads of a backbone: the patch size and the normalisation."""
    patch_size, mean, std = 16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("preset, original", [
    ("davis", (480, 854)), ("jhmdb", (240, 320)), ("vip", (720, 1280)), ("vip", (576, 1024)),
    ("default", (480, 854)), ("default", (1080, 1920)),
])
def test_frame_resize_stays_within_the_documented_1_5e_4_of_opencv_inter_linear(preset, original):
    # docs/propagation.md: torch bilinear (no antialias) vs cv2.resize(INTER_LINEAR) on [0, 1] floats,
    # worst case on uniform noise: 5e-5 (davis) .. 1.2e-4 (1920x1080 -> 848x480), 6e-8 (jhmdb)
    work = working_size(original, PRESETS[preset], 16)
    frame = np.random.default_rng(3).integers(0, 256, (*original, 3), dtype=np.uint8)
    encoder = FrameEncoder(_Stub(), work, torch.device("cpu"))
    x = encoder.preprocess([frame])[0] * encoder._std[0] + encoder._mean[0]  # (3, H', W') in [0, 1]
    ref = cv2.resize(frame.astype(np.float32) / 255, (work[1], work[0]), interpolation=cv2.INTER_LINEAR)
    assert np.abs(x.permute(1, 2, 0).numpy() - ref).max() <= 1.5e-4


def test_label_upsampling_stays_within_2e_7_of_opencv_inter_linear():
    soft = torch.softmax(3 * torch.randn(5, 28, 55, generator=torch.Generator().manual_seed(4)), 0)
    ours = torch.nn.functional.interpolate(soft[None], size=(448, 880), mode="bilinear", align_corners=False)[0]
    ref = cv2.resize(soft.permute(1, 2, 0).numpy(), (880, 448), interpolation=cv2.INTER_LINEAR)
    assert np.abs(ours.permute(1, 2, 0).numpy() - ref).max() <= 2e-7


def test_decode_upsamples_bilinear_argmax_first_max_then_floor_nearest():
    rng = np.random.default_rng(1)
    soft = rng.integers(0, 5, size=(3, 30, 55)).astype(np.float32) / 4  # exact values, many ties
    classes = np.array([0, 2, 5], dtype=np.uint8)
    ours = L.decode_ids(torch.from_numpy(soft), classes, (480, 880), (480, 854))
    up = cv2.resize(soft.transpose(1, 2, 0), (880, 480), interpolation=cv2.INTER_LINEAR)
    ref = classes[np.argmax(up, axis=-1)]
    ref = cv2.resize(ref, (854, 480), interpolation=cv2.INTER_NEAREST)
    assert (ours != ref).mean() < 1e-4  # torch vs OpenCV bilinear: rare 1e-7 flips at most


def test_vip_output_resize_is_pil_nearest():
    soft = torch.rand(4, 28, 55)
    classes = np.arange(4, dtype=np.uint8)
    ours = L.decode_ids(soft, classes, (448, 880), (720, 1280), output_resize="pil")
    at_work = L.decode_ids(soft, classes, (448, 880), (448, 880))
    ref = np.asarray(Image.fromarray(at_work).resize((1280, 720), Image.NEAREST))
    np.testing.assert_array_equal(ours, ref)


def _draw_labelmap_reference(img: np.ndarray, pt: tuple[float, float], sigma: float = 0.5) -> np.ndarray:
    """The classic Gaussian label map written out from docs/propagation-protocol.md §4.2 (window corners by
    Python int() truncation, 6*sigma+1 taps centred at index size // 2, assignment)."""
    ul = [int(pt[0] - 3 * sigma), int(pt[1] - 3 * sigma)]
    br = [int(pt[0] + 3 * sigma + 1), int(pt[1] + 3 * sigma + 1)]
    if ul[0] >= img.shape[1] or ul[1] >= img.shape[0] or br[0] < 0 or br[1] < 0:
        return img
    size = 6 * sigma + 1
    x = np.arange(0, size, 1, float)
    y = x[:, None]
    g = np.exp(-((x - size // 2) ** 2 + (y - size // 2) ** 2) / (2 * sigma ** 2))
    gx = max(0, -ul[0]), min(br[0], img.shape[1]) - ul[0]
    gy = max(0, -ul[1]), min(br[1], img.shape[0]) - ul[1]
    ix = max(0, ul[0]), min(br[0], img.shape[1])
    iy = max(0, ul[1]), min(br[1], img.shape[0])
    img[iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
    return img


@pytest.mark.parametrize("point", [(5.3, 7.8), (1.0, 0.4), (0.2, 12.6), (19.6, 19.4), (-0.7, 3.0),
                                   (21.0, 5.0), (10.5, 10.5), (1.5, 1.49)])
def test_keypoint_heatmaps_follow_the_reference_window_rules(point):
    maps = L.keypoint_heatmaps(np.array([point]), (20, 20)).numpy()
    ref = _draw_labelmap_reference(np.zeros((20, 20)), point).astype(np.float32)
    np.testing.assert_array_equal(maps[1], ref)
    np.testing.assert_array_equal(maps[0], (ref == 0).astype(np.float32))


def test_keypoint_left_border_shift_of_the_reference_is_kept():
    maps = L.keypoint_heatmaps(np.array([[1.0, 5.0]]), (10, 10)).numpy()
    assert np.unravel_index(maps[1].argmax(), maps[1].shape) == (5, 2)  # not (5, 1): quirk P15 (§4.2, §11.2)


def test_top5_soft_argmax_and_lost_joints():
    labels = torch.zeros(3, 6, 8)
    labels[1, 2, 3], labels[1, 2, 4] = 3.0, 1.0
    xy, vis = L.decode_keypoints(labels)
    torch.testing.assert_close(xy[0], torch.tensor([3.25, 2.0]))
    assert vis.tolist() == [True, False] and xy[1].tolist() == [-1.0, -1.0]


# ---------------------------------------------------------------------------------------- presets

def test_presets_are_the_papers_protocols():
    assert (PRESETS["davis"].size, PRESETS["davis"].topk) == ((480, 880), 7)
    assert (PRESETS["jhmdb"].size, PRESETS["jhmdb"].topk) == ((320, 320), 7)
    assert (PRESETS["vip"].topk, PRESETS["vip"].output_resize) == (10, "pil")
    for p in PRESETS.values():
        assert (p.temperature, p.radius, p.n_context) == (0.7, 20, 20)


@pytest.mark.parametrize("preset, original, patch, expected", [
    ("davis", (480, 854), 16, (480, 880)),
    ("davis", (480, 854), 14, (476, 868)),
    ("default", (480, 854), 16, (480, 848)),
    ("default", (480, 854), 14, (476, 854)),
    ("default", (720, 1296), 16, (480, 864)),
    ("jhmdb", (240, 320), 16, (320, 320)),
    ("vip", (720, 1280), 16, (448, 880)),
    ("vip", (1280, 720), 16, (880, 448)),
])
def test_working_size(preset, original, patch, expected):
    assert working_size(original, PRESETS[preset], patch) == expected


def test_explicit_size_is_floored_to_the_patch_size():
    assert working_size((480, 854), PRESETS["davis"], 16, size=(250, 333)) == (240, 320)


# ----------------------------------------------------------------------------------- front ends

def test_propagate_masks_keeps_ids_and_frame0_is_the_resampled_first_mask(clip, tiny):
    frames, gt = clip
    first = np.where(gt[0] == 1, 3, np.where(gt[0] == 2, 9, 0)).astype(np.uint8)  # ids need not be consecutive
    masks = tcore.propagate_masks(frames, first, model=tiny, size=SMALL, progress=False)
    assert masks.shape == gt.shape and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 3, 9}
    work = SMALL
    classes = np.array([0, 3, 9], dtype=np.uint8)
    expected0 = L.decode_ids(L.soft_onehot_at_grid(first, classes, work, 16), classes, work, gt.shape[1:])
    np.testing.assert_array_equal(masks[0], expected0)


def test_stream_batch_size_and_soft_labels_agree(clip, tiny):
    frames, gt = clip
    result = tcore.propagate_masks(frames, gt[0], model=tiny, size=SMALL, progress=False, soft=True, batch_size=4)
    streamed = list(tcore.iter_masks(frames, gt[0], model=tiny, size=SMALL, progress=False, batch_size=1))
    assert [t for t, _ in streamed] == list(range(len(frames)))
    np.testing.assert_array_equal(np.stack([m for _, m in streamed]), result.masks)
    assert result.soft.shape == (6, 3, 4, 6) and result.soft.dtype == np.float32
    np.testing.assert_allclose(result.soft.sum(1), np.ones((6, 4, 6)), atol=1e-6)
    assert result.ids.tolist() == [0, 1, 2] and result.palette is None


def test_timm_vit_module_is_accepted_as_model(clip):
    import timm

    frames, gt = clip
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1)
    masks = tcore.propagate_masks(frames[:3], gt[0], model=net, size=SMALL, progress=False)
    assert masks.shape == (3, 64, 96)


def test_keypoints_round_trip_shapes_and_frame0(clip, tiny):
    frames, _ = clip
    points = np.array([[40.0, 40.0], [72.0, 30.0], [np.nan, np.nan]])  # >= 1.5 cells from the border
    kps, vis = tcore.propagate_keypoints(frames, points, model=tiny, size=SMALL, progress=False)
    assert kps.shape == (6, 3, 2) and vis.shape == (6, 3)
    assert vis[0].tolist() == [True, True, False] and kps[0, 2].tolist() == [-1.0, -1.0]
    np.testing.assert_allclose(kps[0, :2], points[:2], atol=16)  # within a feature cell


def test_parts_default_to_the_vip_protocol(clip, tiny, monkeypatch):
    from tcore.propagation import encoder

    seen = {}
    real = encoder.get_preset
    monkeypatch.setattr(encoder, "get_preset", lambda p: seen.setdefault("preset", real(p)))
    frames, gt = clip
    out = tcore.propagate_parts(frames[:2], gt[0], model=tiny, size=SMALL, progress=False)
    assert out.shape == (2, 64, 96) and seen["preset"] is PRESETS["vip"]


def test_mask_size_mismatch_names_both_sizes(clip, tiny):
    frames, gt = clip
    with pytest.raises(ValueError, match=r"first_mask: size 95x64 \(WxH\) differs from the video frames' 96x64"):
        tcore.propagate_masks(frames, gt[0][:, :95], model=tiny, size=SMALL, progress=False)


def test_empty_first_mask_is_an_error(clip, tiny):
    frames, gt = clip
    with pytest.raises(ValueError, match="no object in the first mask"):
        tcore.propagate_masks(frames, np.zeros_like(gt[0]), model=tiny, size=SMALL, progress=False)


def test_single_frame_video_is_an_error(clip, tiny):
    frames, gt = clip
    with pytest.raises(ValueError, match="at least 2 frames, got 1"):
        tcore.propagate_masks(frames[:1], gt[0], model=tiny, size=SMALL, progress=False)


def test_more_than_255_objects_is_an_error(clip, tiny):
    frames, _ = clip
    ids = np.arange(64 * 96, dtype=np.int64).reshape(64, 96) % 300
    with pytest.raises(ValueError, match="255"):
        tcore.propagate_masks(frames, ids, model=tiny, size=SMALL, progress=False)


def test_unreadable_frame_in_the_middle_is_named(clip, tiny, tmp_path):
    frames, gt = clip
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{i:05d}.jpg")
    (tmp_path / "00003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"frame 3 \(.*00003\.jpg\) could not be read"):
        tcore.propagate_masks(tmp_path, gt[0], model=tiny, size=SMALL, progress=False)


def test_video_file_without_the_video_extra_says_how_to_install(tmp_path, tiny, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"tcore\[video\]"):
        tcore.propagate_masks(tmp_path / "clip.mp4", np.ones((4, 4), np.uint8), model=tiny, size=SMALL, progress=False)


def test_default_model_offline_never_falls_back_to_random_weights(clip, monkeypatch, tmp_path):
    from tcore import weights as W

    real = W._hf_hub_download
    monkeypatch.setattr(W, "_hf_hub_download", lambda *a, **k: real(*a, **{**k, "cache_dir": str(tmp_path)}))
    frames, gt = clip
    with pytest.raises(W.WeightsUnavailableError, match="Three ways to fix it"):
        tcore.propagate_masks(frames, gt[0], progress=False)


def test_decoding_k_frames_on_the_device_equals_decoding_each_frame():
    gen = torch.Generator().manual_seed(5)
    soft = torch.softmax(4 * torch.randn(3, 4, 28, 55, generator=gen), dim=1)  # (k, C, h, w)
    classes = np.array([0, 3, 7, 200], dtype=np.uint8)
    for out_size, resize in (((480, 854), "floor"), ((720, 1280), "pil"), ((448, 880), "floor")):
        ids = L.decode_ids_on_device(soft, classes, (448, 880), out_size, resize)
        assert ids.dtype == torch.uint8 and ids.shape[0] == 3
        for k in range(3):
            expected = L.decode_ids(soft[k], classes, (448, 880), out_size, resize)
            np.testing.assert_array_equal(L.finish_ids(ids[k].numpy(), out_size, resize), expected)
