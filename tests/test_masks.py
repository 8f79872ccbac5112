"""Masks: `tcore.read_mask` conventions, indexed-PNG writing and the DAVIS-2017 palette."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import shared_path
from PIL import Image

import tcore
from tcore.io import DAVIS_PALETTE, MAX_GREY_IDS, read_mask, write_mask, write_masks

VOC_FIRST = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]


def _ids(h: int = 12, w: int = 16) -> np.ndarray:
    """(H, W) uint8 ids {0, 1, 3, 7}: non-consecutive on purpose."""
    ids = np.zeros((h, w), np.uint8)
    ids[2:6, 2:6], ids[6:10, 8:14], ids[0, :] = 1, 3, 7
    return ids


def _save(image: Image.Image, path):
    image.save(path)
    return path


# ---------------------------------------------------------------- palette images


def test_palette_png_gives_its_indices_as_ids_and_its_palette(tmp_path):
    image = Image.fromarray(_ids())
    image.putpalette(np.array(VOC_FIRST * 2, np.uint8).tobytes())
    ids, palette = read_mask(_save(image, tmp_path / "m.png"))
    np.testing.assert_array_equal(ids, _ids())
    assert ids.dtype == np.uint8 and palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[:5].tolist() == VOC_FIRST
    np.testing.assert_array_equal(palette[10:], DAVIS_PALETTE[10:])  # entries it lacks: DAVIS colours


def test_void_255_in_a_palette_png_becomes_background(tmp_path):
    raw = _ids()
    raw[0, :] = 255
    ids, _ = read_mask(_save(_palette_image(raw), tmp_path / "void.png"))
    assert ids[0].tolist() == [0] * 16 and set(np.unique(ids)) == {0, 1, 3}


def test_threshold_with_a_palette_png_is_refused():
    with pytest.raises(ValueError, match="palette image already holds object ids; drop threshold="):
        read_mask(_palette_image(_ids()), threshold=128)


def _palette_image(ids: np.ndarray) -> Image.Image:
    image = Image.fromarray(ids)
    image.putpalette(DAVIS_PALETTE.tobytes())
    return image


# ---------------------------------------------------------------- grey images and arrays


def test_binary_0_255_grey_mask_is_one_object(tmp_path):
    grey = np.where(_ids() > 0, 255, 0).astype(np.uint8)
    ids, palette = read_mask(_save(Image.fromarray(grey), tmp_path / "b.png"))
    assert palette is None
    np.testing.assert_array_equal(ids, (grey == 255).astype(np.uint8))


def test_grey_mask_of_small_values_keeps_them_as_ids(tmp_path):
    ids, palette = read_mask(_save(Image.fromarray(_ids()), tmp_path / "g.png"))
    np.testing.assert_array_equal(ids, _ids())
    assert palette is None


def test_grey_mask_with_the_most_ids_allowed_is_ids_and_one_more_is_soft():
    values = np.arange(MAX_GREY_IDS + 1, dtype=np.uint8).reshape(1, -1)  # 0 and 32 ids (VIP has 19)
    np.testing.assert_array_equal(read_mask(values)[0], values)
    more = np.arange(MAX_GREY_IDS + 2, dtype=np.uint8).reshape(1, -1)
    with pytest.raises(ValueError, match="soft mask.*threshold=128"):
        read_mask(more)


def test_antialiased_binary_mask_is_soft_and_suggests_threshold():
    grey = np.zeros((8, 8), np.uint8)
    grey[2:6, 2:6] = 255
    grey[1, 2:6], grey[2:6, 1] = 128, 64  # a few edge levels next to 255
    with pytest.raises(ValueError, match=r"soft mask.*3 distinct non-zero grey levels \(64\.\.255\).*threshold=128"):
        read_mask(grey)
    np.testing.assert_array_equal(read_mask(grey, threshold=128)[0], grey >= 128)


def test_palette_escape_reads_grey_ids_with_255_as_void():
    grey = _ids()
    grey[0, :] = 255
    with pytest.raises(ValueError, match="putpalette"):
        read_mask(Image.fromarray(grey))
    image = Image.fromarray(grey)
    image.putpalette(DAVIS_PALETTE.tobytes())
    assert set(np.unique(read_mask(image)[0])) == {0, 1, 3}


def test_sixteen_bit_grey_mask_holds_ids_or_needs_a_threshold(tmp_path):
    ids16 = _ids().astype(np.uint16)
    ids, _ = read_mask(_save(Image.fromarray(ids16), tmp_path / "i16.png"))
    np.testing.assert_array_equal(ids, _ids())
    soft = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
    with pytest.raises(ValueError, match=r"\[0, 255\].*threshold="):
        read_mask(_save(Image.fromarray(soft), tmp_path / "soft16.png"))


@pytest.mark.parametrize("mode", ["1", "LA", "I", "F"])
def test_other_single_channel_modes_follow_the_grey_rule(mode):
    binary = Image.fromarray(np.where(_ids() > 0, 255, 0).astype(np.uint8)).convert(mode)
    ids, palette = read_mask(binary)
    np.testing.assert_array_equal(ids, (_ids() > 0).astype(np.uint8))
    assert palette is None


def test_bool_and_integer_arrays_and_tensors_are_ids():
    np.testing.assert_array_equal(read_mask(_ids() > 0)[0], (_ids() > 0).astype(np.uint8))
    np.testing.assert_array_equal(read_mask(_ids().astype(np.int64))[0], _ids())
    ids, palette = read_mask(torch.from_numpy(_ids()).long())
    np.testing.assert_array_equal(ids, _ids())
    assert palette is None and ids.dtype == np.uint8


def test_float_arrays_need_integer_values_or_a_threshold():
    np.testing.assert_array_equal(read_mask(_ids().astype(np.float32))[0], _ids())
    probs = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    with pytest.raises(ValueError, match=r"fractional values.*threshold=0\.5"):
        read_mask(probs)
    np.testing.assert_array_equal(read_mask(torch.from_numpy(probs), threshold=0.5)[0], probs >= 0.5)


@pytest.mark.parametrize("bad, error, message", [
    (np.array([[0, 300]]), ValueError, r"\[0, 255\].*\[0, 300\]"),
    (np.array([[-1, 1]]), ValueError, r"\[0, 255\]"),
    (np.zeros((1, 5, 6), np.uint8), ValueError, r"mask\[0\]"),
    (np.zeros((4, 4), np.complex64), TypeError, "integer, bool or float"),
    ("no/such/mask.png", FileNotFoundError, "no such file"),
    (3.5, TypeError, "expected a path, a PIL image"),
])
def test_bad_mask_inputs_get_clear_errors(bad, error, message):
    with pytest.raises(error, match=message):
        read_mask(bad)


def test_threshold_must_be_a_number():
    with pytest.raises(TypeError, match="threshold"):
        read_mask(_ids(), threshold="128")


def test_unreadable_mask_file_names_the_file(tmp_path):
    (tmp_path / "m.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"m\.png' could not be read"):
        read_mask(tmp_path / "m.png")


# ---------------------------------------------------------------- colour images


def test_rgb_mask_numbers_colours_in_lexicographic_order(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0], rgb[1, 1], rgb[2, 2], rgb[3, 3] = (0, 255, 0), (255, 0, 0), (0, 0, 9), (0, 255, 0)
    ids, palette = read_mask(_save(Image.fromarray(rgb).convert("RGBA"), tmp_path / "c.png"))
    assert palette is None
    assert (ids[2, 2], ids[0, 0], ids[1, 1], ids[3, 3]) == (1, 2, 3, 2)  # (0,0,9) < (0,255,0) < (255,0,0)
    assert ids.sum() == 1 + 2 + 3 + 2


def test_rgb_mask_with_equal_channels_is_read_as_grey():
    grey = _ids()
    np.testing.assert_array_equal(read_mask(np.repeat(grey[..., None], 3, axis=2))[0], grey)


def test_rgb_mask_with_too_many_colours_suggests_threshold():
    rgb = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"1024 distinct colours.*threshold=128.*palette PNG"):
        read_mask(rgb)


def test_threshold_on_colour_uses_luminance():
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 1], rgb[0, 2] = (255, 0, 0), (255, 255, 255)  # luminance 76 and 255
    np.testing.assert_array_equal(read_mask(Image.fromarray(rgb), threshold=128)[0], [[0, 0, 1]])
    np.testing.assert_array_equal(read_mask(rgb, threshold=50)[0], [[0, 1, 1]])


# ---------------------------------------------------------------- writing


def test_write_then_read_keeps_ids_and_palette(tmp_path):
    palette = np.random.default_rng(1).integers(0, 256, size=(256, 3), dtype=np.uint8)
    path = write_mask(tmp_path / "sub" / "m.png", _ids(), palette)
    with Image.open(path) as image:
        assert image.mode == "P"
    ids, read_palette = read_mask(path)
    np.testing.assert_array_equal(ids, _ids())
    np.testing.assert_array_equal(read_palette, palette)


def test_write_masks_names_files_and_defaults_to_the_davis_palette(tmp_path):
    masks = np.stack([_ids(), _ids() // 3])
    paths = write_masks(tmp_path / "out", masks)
    assert [p.name for p in paths] == ["00000.png", "00001.png"]
    ids, palette = read_mask(paths[1])
    np.testing.assert_array_equal(ids, _ids() // 3)
    np.testing.assert_array_equal(palette, DAVIS_PALETTE)


def test_write_masks_streams_an_iterable_with_the_video_names(tmp_path):
    names = ["frame_7", "frame_8", "frame_9"]
    stream = ((t, torch.from_numpy(_ids())) for t in (0, 2))  # (t, mask) pairs, a subset
    paths = write_masks(tmp_path, stream, palette=VOC_FIRST, names=names)
    assert [p.name for p in paths] == ["frame_7.png", "frame_9.png"]
    assert read_mask(paths[0])[1][:5].tolist() == VOC_FIRST
    masks = iter([_ids(), _ids()])
    assert [p.stem for p in write_masks(tmp_path / "b", masks, names=names)] == names[:2]


@pytest.mark.parametrize("masks, names, message", [
    (np.zeros((2, 4, 4), np.uint8), ["a"], "1 names for 2 masks"),
    (iter([np.zeros((4, 4), np.uint8)] * 2), ["a"], "no name for mask 1"),
    (np.zeros((4, 4), np.uint8), None, "for one mask use write_mask"),
    (np.full((1, 4, 4), 255, np.uint8), None, r"masks\[0\].*\[0, 254\].*255 is void"),
    (np.zeros((1, 4, 4), np.float32), None, "must be integers"),
    ([], None, "nothing to write"),
])
def test_write_masks_errors_name_the_problem(tmp_path, masks, names, message):
    with pytest.raises((ValueError, TypeError), match=message):
        write_masks(tmp_path, masks, names=names)


def test_write_mask_needs_a_png_name_and_a_valid_palette(tmp_path):
    with pytest.raises(ValueError, match=r"end the name with \.png"):
        write_mask(tmp_path / "m.jpg", _ids())
    with pytest.raises(ValueError, match="palette"):
        write_mask(tmp_path / "m.png", _ids(), palette=np.zeros((300, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        write_mask(tmp_path / "m.png", _ids(), palette=[[0, 0, 256]])


# ---------------------------------------------------------------- DAVIS palette and real data


def test_davis_palette_starts_like_voc_then_uses_191_then_grey():
    assert DAVIS_PALETTE.shape == (256, 3) and DAVIS_PALETTE.dtype == np.uint8
    assert DAVIS_PALETTE[:5].tolist() == VOC_FIRST
    assert DAVIS_PALETTE[9].tolist() == [191, 0, 0] and DAVIS_PALETTE[22].tolist() == [22, 22, 22]
    assert not DAVIS_PALETTE.flags.writeable


def test_davis_palette_equals_the_palette_of_a_real_davis_2017_annotation():
    path = shared_path("data", "davis", "Annotations", "480p", "bmx-trees", "00000.png")
    with Image.open(path) as image:
        real = np.array(image.getpalette("RGB"), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(real, DAVIS_PALETTE)
    ids, palette = tcore.read_mask(path)
    assert set(np.unique(ids)) == {0, 1, 2} and ids.shape == (480, 854)
    np.testing.assert_array_equal(palette, DAVIS_PALETTE)


def test_davis_annotation_round_trips_through_write_masks(tmp_path):
    path = shared_path("data", "davis", "Annotations", "480p", "dog", "00000.png")
    ids, palette = tcore.read_mask(path)
    [out] = tcore.write_masks(tmp_path, ids[None], palette, names=["00000"])
    with Image.open(path) as original, Image.open(out) as written:
        np.testing.assert_array_equal(np.asarray(written), np.asarray(original))
        assert written.getpalette() == original.getpalette()  # the VOC palette of this clip


def test_apple_soft_mask_needs_a_threshold_and_then_gives_one_object():
    path = shared_path("data", "videos", "apple_first_mask.png")
    with pytest.raises(ValueError, match=r"soft mask.*threshold=128"):
        tcore.read_mask(path)
    ids, palette = tcore.read_mask(path, threshold=128)
    assert palette is None and ids.shape == (720, 1296)
    assert set(np.unique(ids)) == {0, 1}
    assert 0.08 < ids.mean() < 0.10  # the data README: 8.8 % of pixels are above 127
