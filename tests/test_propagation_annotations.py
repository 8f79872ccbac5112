"""Masks given at any frame (objects that enter later, corrections), the API shape around them, and
exact fp32 whatever the caller's autocast.

The engine is checked against a literal implementation of the extended protocol: for target t,
with a the last annotated frame before t (else 0), the keys are every long-term frame (frame 0 and
the annotated frames before t) once, unrestricted; the frames max(a+1, t-n_context) .. t-1 and
max(0, n_context + 1 - (t - a)) copies of frame a, restricted to the radius; annotated frames
carry their merged labels. With no annotation this is the paper's padded sequence.
"""
from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tcore
from tcore.demo import make_demo_clip
from tcore.io import DAVIS_PALETTE
from tcore.propagation import PRESETS, MaskStream, Propagation, Propagator, engine

SMALL = (128, 192)  # an 8x12 grid: coarse, but objects are several cells wide


# ------------------------------------------------------------------------------ literal oracle

def merge(current: torch.Tensor, given: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """(C, N) labels: given channels exact, the others share 1 - sum(given) in proportion."""
    mask = torch.zeros(current.shape[0], dtype=torch.bool)
    mask[channels] = True
    out = torch.zeros_like(current)
    out[mask] = given[mask]
    rest = (1 - given[mask].sum(0)).clamp(min=0)
    others = current[~mask]
    total = others.sum(0)
    share = torch.where(total > 0, others / total.clamp(min=1e-38), torch.zeros_like(others))
    share[0] = torch.where(total > 0, share[0], torch.ones_like(total))  # channel 0 is never given here
    out[~mask] = share * rest
    return out


def literal(features: torch.Tensor, first: torch.Tensor, annotations: dict, topk: int, temperature: float,
            radius: float, n_context: int) -> torch.Tensor:
    """(T, h, w, D), (C, h, w), {k: ((C, h, w) labels, channels)} -> (T, C, h, w), dense and literal."""
    frames, h, w, dim = features.shape
    n = h * w
    feats = features.reshape(frames, n, dim)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cells = torch.stack([yy.flatten(), xx.flatten()], 1).double()
    outside = torch.where(torch.cdist(cells, cells) < radius, 0.0, float("-inf")).float()  # (N_key, N_query)
    labels = {0: first.reshape(-1, n)}
    for t in range(1, frames):
        anchor = max([0] + [k for k in annotations if k < t])
        long_term = [0] + sorted(k for k in annotations if k < t)
        keys = [(f, False) for f in long_term]
        keys += [(f, True) for f in range(max(anchor + 1, t - n_context), t)]
        keys += [(anchor, True)] * max(0, n_context + 1 - (t - anchor))
        scores = torch.stack([feats[f] @ feats[t].T + (outside if restricted else 0) for f, restricted in keys])
        values, index = scores.reshape(len(keys) * n, n).topk(topk, dim=0)  # (K, N_query)
        weights = torch.softmax(values / temperature, dim=0)
        context = torch.cat([labels[f] for f, _ in keys], 1)  # (C, S*N)
        labels[t] = (context[:, index] * weights[None]).sum(1)
        if t in annotations:
            given, channels = annotations[t]
            labels[t] = merge(labels[t], given.reshape(-1, n), channels)
    return torch.stack([labels[t].reshape(-1, h, w) for t in range(frames)])


def drifting(frames: int, h: int, w: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(h, w, dim, generator=gen)]
    for _ in range(frames - 1):
        feats.append(feats[-1] + 0.15 * torch.randn(h, w, dim, generator=gen))
    return F.normalize(torch.stack(feats), dim=-1)


def onehot(ids: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(ids, classes).permute(2, 0, 1).float()


def run(features: torch.Tensor, first: torch.Tensor, annotations: dict, sizes: list[int], **params) -> torch.Tensor:
    prop = Propagator(**params)
    out, t = [prop.reset(features[0], first)], 1
    for size in sizes:
        for labels in prop.step(features[t:t + size]):
            out.append(labels)
        t += size
        if t - 1 in annotations:
            given, channels = annotations[t - 1]
            out[-1] = prop.annotate(given, channels)
    return torch.stack(out)


# --------------------------------------------------------------------------------------- engine

@pytest.mark.parametrize("n_context, k", [(4, 3), (4, 9), (20, 6)])
def test_engine_with_annotations_equals_the_literal_extended_protocol(n_context, k):
    feats = drifting(16, 6, 9, 12, seed=k)
    gen = torch.Generator().manual_seed(1)
    first = onehot(torch.randint(0, 2, (6, 9), generator=gen), 3)  # object 2 absent at frame 0
    late = onehot(torch.randint(0, 3, (6, 9), generator=gen), 3)
    correction = onehot(torch.randint(0, 3, (6, 9), generator=gen), 3)
    annotations = {k: (late, [2]), 12: (correction, [1, 2])}
    params = {"topk": 5, "temperature": 0.7, "radius": 3, "n_context": n_context}
    sizes = [k] + [12 - k] + [3]  # steps end at the annotated frames
    ours = run(feats, first, annotations, sizes, **params)
    reference = literal(feats, first, annotations, **params)
    assert (ours - reference).abs().max().item() <= 1e-6
    assert torch.equal(ours.argmax(1), reference.argmax(1))
    assert (ours[:k, 2] == 0).all() and (ours[k + 1:, 2] > 0).any()  # object 2 exists from frame k on


def test_without_annotate_the_engine_is_the_papers_padded_sequence():
    feats = drifting(12, 5, 7, 8, seed=3)
    first = torch.softmax(3 * torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(4)), 0)
    params = {"topk": 5, "temperature": 0.7, "radius": 2.5, "n_context": 4}
    assert torch.equal(run(feats, first, {}, [11], **params), tcore.propagate_labels(feats, first, **params))
    assert torch.equal(literal(feats, first, {}, **params).argmax(1), run(feats, first, {}, [11], **params).argmax(1))


def test_annotate_merges_given_channels_exactly_and_renormalises_the_others():
    feats = drifting(2, 2, 2, 4, seed=5)
    prop = Propagator(topk=2, radius=3, n_context=2)
    prop.reset(feats[0], torch.full((3, 2, 2), 1 / 3))
    current = prop.step(feats[1:])[0]  # (3, 2, 2), each cell sums to 1
    given = torch.zeros(3, 2, 2)
    given[2, 0, 0], given[2, 0, 1] = 1.0, 0.25  # object 2 covers cell (0, 0) and a quarter of (0, 1)
    merged = prop.annotate(given, [2])
    assert merged[2].tolist() == given[2].tolist()  # exactly the given values, elsewhere 0
    assert torch.allclose(merged.sum(0), torch.ones(2, 2))
    others = current[:2] / current[:2].sum(0)
    assert torch.allclose(merged[:2], others * (1 - given[2]))  # the rest keeps its proportions


def test_annotated_frames_are_kept_forever_but_the_context_stays_bounded():
    feats = drifting(40, 4, 5, 8, seed=6)
    prop = Propagator(topk=3, radius=2, n_context=3)
    prop.reset(feats[0], onehot(torch.zeros(4, 5, dtype=torch.long), 2))
    prop.step(feats[1:10])
    before = prop.nbytes
    prop.annotate(onehot(torch.ones(4, 5, dtype=torch.long), 2), [1])
    prop.step(feats[10:40])
    frame = 4 * 5 * (8 + 2) * 4  # one frame's features and labels in fp32
    assert prop.nbytes - before == frame + 4 * 5 * 8 * 4 + 8  # the annotated frame (+ its key copy, slot id)


def test_annotate_errors_name_the_argument():
    feats = drifting(2, 3, 3, 4, seed=7)
    prop = Propagator(topk=2, radius=2)
    with pytest.raises(RuntimeError, match=r"reset\("):
        prop.annotate(torch.zeros(2, 3, 3))
    prop.reset(feats[0], onehot(torch.zeros(3, 3, dtype=torch.long), 2))
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, 3, 3\)"):
        prop.annotate(torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match=r"channels: expected channel indices in 0..1"):
        prop.annotate(torch.zeros(2, 3, 3), [2])


# ---------------------------------------------------------------------------------- front end

@pytest.fixture(scope="module")
def entering():
    """8 frames; object 2 is hidden under a flat grey patch before frame 3, then visible."""
    frames, gt = make_demo_clip(n_frames=8, size=SMALL, seed=1)
    frames = frames.copy()
    for t in range(3):
        frames[t][gt[t] == 2] = 128
        gt[t][gt[t] == 2] = 0
    return frames, gt


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_an_object_entering_at_frame_k_is_absent_before_and_tracked_to_the_end(entering, tiny):
    frames, gt = entering
    masks = tcore.propagate_masks(frames, {0: gt[0], 3: np.where(gt[3] == 2, 2, 0)}, model=tiny, size=SMALL,
                                  progress=False)
    assert not (masks[:3] == 2).any()
    # as well tracked as when the video starts at frame 3 with both objects (this tiny random model on an
    # 8x12 grid: 0.60 for that fresh start, 0.57 here); it does not fade
    fresh = tcore.propagate_masks(frames, {3: gt[3]}, model=tiny, size=SMALL, progress=False)
    late_iou, fresh_iou = _iou(masks[-1] == 2, gt[-1] == 2), _iou(fresh[-1] == 2, gt[-1] == 2)
    assert late_iou >= 0.5 and late_iou >= 0.9 * fresh_iou
    assert _iou(masks[-1] == 1, gt[-1] == 1) >= 0.5  # the mask of frame 3 showed only object 2: object 1 stays


def test_a_correction_at_frame_k_changes_frames_k_and_later_only(entering, tiny):
    frames, gt = entering
    plain = tcore.propagate_masks(frames, gt[0], model=tiny, size=SMALL, progress=False)
    wrong = np.zeros_like(gt[4])
    wrong[:40, :40] = 1  # object 1 "corrected" to a box
    corrected = tcore.propagate_masks(frames, {0: gt[0], 4: wrong}, model=tiny, size=SMALL, progress=False)
    np.testing.assert_array_equal(corrected[:4], plain[:4])
    assert (corrected[4] != plain[4]).any()
    assert _iou(corrected[4] == 1, wrong == 1) >= 0.9


def test_a_later_mask_enters_the_grid_by_its_cover_the_first_by_the_papers_centre_sample(entering, tiny):
    frames, _ = entering
    left = np.zeros(SMALL, np.uint8)
    left[:, :20] = 1  # grid column 0 whole, column 1 a quarter (x 16..19): its centre pixels (23, 24) miss it
    result = tcore.propagate_masks(frames, {0: left, 4: left}, model=tiny, size=SMALL, progress=False, soft=True)
    assert (result.soft[0][1, :, 0] == 1).all() and (result.soft[0][1, :, 1] == 0).all()  # the paper's frame 0
    assert (result.soft[4][1, :, 0] == 1).all() and (result.soft[4][1, :, 1] == 0.25).all()  # the cover
    assert (result.soft[4][1, :, 2:] == 0).all()


def test_a_mapping_with_frame_0_alone_and_a_folder_equal_the_single_mask(entering, tiny, tmp_path):
    frames, gt = entering
    single = tcore.propagate_masks(frames, gt[0], model=tiny, size=SMALL, progress=False, soft=True)
    mapping = tcore.propagate_masks(frames, {0: gt[0]}, model=tiny, size=SMALL, progress=False, soft=True)
    np.testing.assert_array_equal(mapping.masks, single.masks)
    np.testing.assert_array_equal(mapping.soft, single.soft)
    video, masks = tmp_path / "frames", tmp_path / "masks"
    video.mkdir()
    masks.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(video / f"{t:05d}.png")
    for t, ids in ((0, gt[0]), (3, np.where(gt[3] == 2, 2, 0).astype(np.uint8))):
        image = Image.fromarray(ids)
        image.putpalette(DAVIS_PALETTE.tobytes())
        image.save(masks / f"{t:05d}.png")
    from_folder = tcore.propagate_masks(video, masks, model=tiny, size=SMALL, progress=False, soft=True)
    from_mapping = tcore.propagate_masks(video, {0: gt[0], 3: np.where(gt[3] == 2, 2, 0)}, model=tiny, size=SMALL,
                                         progress=False)
    np.testing.assert_array_equal(from_folder.masks, from_mapping)
    assert from_folder.palette is not None and from_folder.ids.tolist() == [0, 1, 2]


def test_frames_before_the_first_mask_are_background_and_never_encoded(entering, tiny, monkeypatch):
    from tcore.propagation.encoder import FrameEncoder

    frames, gt = entering
    encoded = []
    real = FrameEncoder.__call__
    monkeypatch.setattr(FrameEncoder, "__call__", lambda self, chunk: encoded.append(len(chunk)) or real(self, chunk))
    result = tcore.propagate_masks(frames, {3: gt[3]}, model=tiny, size=SMALL, progress=False, soft=True)
    assert sum(encoded) == 5  # frames 3..7
    assert not result.masks[:3].any() and (result.soft[:3, 0] == 1).all()
    assert result.masks[3].any()


def test_output_is_bit_identical_inside_a_bfloat16_autocast(entering, tiny):
    frames, gt = entering
    plain = tcore.propagate_masks(frames[:4], gt[0], model=tiny, size=SMALL, progress=False, soft=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = tcore.propagate_masks(frames[:4], gt[0], model=tiny, size=SMALL, progress=False, soft=True)
        x = torch.randn(1, 3, 64, 64)
        drifted = tiny.patch_tokens(x)  # what the guard prevents: bf16 matmuls in the backbone
    np.testing.assert_array_equal(inside.soft, plain.soft)
    np.testing.assert_array_equal(inside.masks, plain.masks)
    assert not torch.equal(drifted.float(), tiny.patch_tokens(x))


def test_settings_travel_in_the_preset(entering, tiny):
    frames, gt = entering
    by_size = tcore.propagate_masks(frames[:4], gt[0], model=tiny, size=SMALL, progress=False, soft=True)
    preset = dataclasses.replace(PRESETS["davis"], size=SMALL)
    by_preset = tcore.propagate_masks(frames[:4], gt[0], model=tiny, preset=preset, progress=False, soft=True)
    np.testing.assert_array_equal(by_preset.soft, by_size.soft)
    fewer = dataclasses.replace(preset, topk=1)
    assert not np.array_equal(tcore.propagate_masks(frames[:4], gt[0], model=tiny, preset=fewer, progress=False,
                                                    soft=True).soft, by_size.soft)
    with pytest.raises(ValueError, match="size_rule 'fixed' takes 2"):
        dataclasses.replace(PRESETS["davis"], size=(480,))


def test_return_types_are_declared_and_kept(entering, tiny):
    frames, gt = entering
    returns = [typing.get_type_hints(f)["return"] for f in typing.get_overloads(tcore.propagate_masks)]
    assert returns == [np.ndarray, Propagation]
    assert len(typing.get_overloads(tcore.iter_masks)) == 2
    masks = tcore.propagate_masks(frames[:3], gt[0], model=tiny, size=SMALL, progress=False)
    assert isinstance(masks, np.ndarray) and masks.shape == (3, *SMALL) and masks.dtype == np.uint8
    stream = tcore.iter_masks(frames[:3], gt[0], model=tiny, size=SMALL, progress=False, soft=True)
    assert isinstance(stream, MaskStream) and stream.ids.tolist() == [0, 1] and stream.names[0] == "00000"
    t, mask, soft = next(stream)
    assert (t, mask.shape, soft.shape, soft.dtype) == (0, SMALL, (2, 8, 12), np.float32)
    stream.close()


@pytest.mark.parametrize("masks, error, match", [
    ({}, ValueError, "empty mapping"),
    ({8: None}, ValueError, r"masks\[8\]: frame index out of range for a video of 8 frames"),
    ({"3": None}, TypeError, "keys must be frame indices"),
    ({0: "GT0", 5: np.zeros(SMALL, np.uint8)}, ValueError, r"masks\[5\]: no object in the mask"),
    ({0: "GT0", 2: np.ones((5, 5), np.uint8)}, ValueError, r"masks\[2\]: size 5x5 \(WxH\) differs"),
])
def test_bad_masks_get_one_clear_error(entering, tiny, masks, error, match):
    frames, gt = entering
    masks = {k: gt[0] if isinstance(v, str) else v for k, v in masks.items()}
    with pytest.raises(error, match=match):
        tcore.propagate_masks(frames, masks, model=tiny, size=SMALL, progress=False)


def test_a_png_named_like_no_frame_is_named(entering, tiny, tmp_path):
    frames, gt = entering
    Image.fromarray(gt[0]).save(tmp_path / "first.png")
    with pytest.raises(ValueError, match=r"first\.png' names no frame of the video"):
        tcore.propagate_masks(frames, tmp_path, model=tiny, size=SMALL, progress=False)


def test_engine_module_keeps_one_fp32_guard():
    import inspect

    from tcore.propagation import encoder

    for module in (engine, encoder):
        source = inspect.getsource(module)
        assert "exact_fp32" in source and "allow_tf32" not in source and "fp32_precision" not in source


def test_cli_propagate_takes_a_folder_of_masks_and_keeps_their_palette(entering, tiny, tmp_path, capsys):
    from tcore.cli import main

    frames, gt = entering
    tiny.save_pretrained(str(tmp_path / "model"))
    for t, frame in enumerate(frames):
        (tmp_path / "video").mkdir(exist_ok=True)
        Image.fromarray(frame).save(tmp_path / "video" / f"{t:05d}.png")
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    for t, ids in ((0, gt[0]), (3, np.where(gt[3] == 2, 2, 0).astype(np.uint8))):
        (tmp_path / "masks").mkdir(exist_ok=True)
        image = Image.fromarray(ids)
        image.putpalette(palette.tobytes())
        image.save(tmp_path / "masks" / f"{t:05d}.png")
    rc = main(["propagate", str(tmp_path / "video"), str(tmp_path / "masks"), "-o", str(tmp_path / "out"),
               "--model", str(tmp_path / "model"), "--size", *map(str, SMALL), "--device", "cpu", "--quiet"])
    assert rc == 0 and "wrote 8 masks" in capsys.readouterr().out
    written = [Image.open(tmp_path / "out" / f"{t:05d}.png") for t in range(8)]
    assert np.asarray(written[0].getpalette()).reshape(-1, 3)[:3].tolist() == palette[:3].tolist()
    assert not (np.asarray(written[2]) == 2).any() and (np.asarray(written[7]) == 2).any()
