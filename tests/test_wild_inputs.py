"""Issue 19 through the API: frames and masks as users bring them (phone photos, decompression
bombs, stray formats, 16-bit masks, grey and float arrays), and write errors named with their path.
(Working sizes that cannot run are in test_reliability.py, the command line's side in
test_cli_bad_inputs.py, SIGTERM in test_one_writer.py.)"""
from __future__ import annotations

import errno
import logging

import numpy as np
import pytest
import torch
from helpers import bomb_png
from PIL import ExifTags, Image

from tcore.errors import FileAccessError, InvalidInputError, InvalidTypeError
from tcore.files import write_atomic
from tcore.io import DAVIS_PALETTE, FrameReadError, read_mask, read_video, write_masks

# ------------------------------------------------------------------ phone photos: EXIF orientation

_DISPLAY = (48, 64)  # (H, W) of the picture as viewers show it


def _upright_picture() -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) grey picture with a red square off centre, and the (H, W) mask drawn on it, upright."""
    picture = np.full((*_DISPLAY, 3), 90, np.uint8)
    mask = np.zeros(_DISPLAY, np.uint8)
    mask[4:20, 36:60] = 1
    picture[mask == 1] = (230, 20, 20)
    return picture, mask


def _sideways(image: Image.Image, path, **save) -> None:
    """Save `image` as a phone does: pixels stored turned 90 degrees, EXIF orientation 6 to turn them back."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # viewers rotate the stored pixels 90 degrees clockwise
    image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, **save)


def test_a_phone_photo_is_read_upright_and_a_mask_drawn_on_it_as_shown_overlaps_it(tmp_path):
    picture, mask = _upright_picture()
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(2):
        _sideways(Image.fromarray(picture), folder / f"{t:05d}.jpg", quality=95)
    frames = read_video(folder)
    assert frames.size == _DISPLAY
    red = (frames[1][..., 0] > 160) & (frames[1][..., 1] < 80)
    assert (red & (mask == 1)).sum() / (red | (mask == 1)).sum() > 0.95  # the mask lies on the square


def test_a_mask_file_with_an_exif_orientation_is_turned_like_its_frame(tmp_path):
    _, mask = _upright_picture()
    image = Image.fromarray(mask)
    image.putpalette(DAVIS_PALETTE.tobytes())
    _sideways(image, tmp_path / "mask.png")
    ids, _ = read_mask(tmp_path / "mask.png")
    np.testing.assert_array_equal(ids, mask)


# ------------------------------------------------------------------ decompression bombs


def test_a_decompression_bomb_is_refused_as_frame_or_mask_naming_the_file_and_how_to_allow_it(tmp_path):
    folder = tmp_path / "frames"
    bomb = bomb_png(folder / "00000.png")
    limit = (rf"now {Image.MAX_IMAGE_PIXELS}\).*PIL.Image.MAX_IMAGE_PIXELS = 900_000_000.*"
             r"TCORE_MAX_IMAGE_PIXELS=900000000")
    with pytest.raises(FrameReadError, match=rf"frame 0 \({bomb}\) is refused: .*900000000 pixels.*{limit}"):
        read_video(folder)
    with pytest.raises(InvalidInputError, match=rf"mask '{bomb}' is refused: .*{limit}"):
        read_mask(bomb)


def test_a_raised_pil_limit_lets_a_genuinely_large_frame_through(tmp_path, monkeypatch):
    folder = tmp_path / "frames"
    bomb_png(folder / "00000.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10 ** 9)
    assert read_video(folder).size == (30000, 30000)  # the header is read; nothing is decoded


# ------------------------------------------------------------------ folders: nothing skipped in silence


def test_an_image_of_another_format_in_a_frame_folder_is_refused_by_name(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(3):
        Image.new("RGB", (16, 16)).save(folder / f"{t:05d}.png")
    Image.new("RGB", (16, 16)).save(folder / "00003.gif")
    (folder / "notes.txt").write_text("not an image: ignored")
    with pytest.raises(InvalidInputError, match=r"holds 1 image\(s\) in a format not read as frames \(00003.gif\) "
                                                r"beside 3 frame\(s\); convert them"):
        read_video(folder)


# ------------------------------------------------------------------ masks outside the grey rule


def test_ids_above_255_are_named_as_a_16bit_id_mask_to_renumber_not_thresholded():
    ids = np.zeros((8, 8), np.uint16)
    ids[:4, :4], ids[4:, 4:] = 1000, 2000
    with pytest.raises(InvalidInputError, match=r"got values in \[0, 2000\]: 2 object ids \(1000, 2000\), a 16-bit "
                                                r"id mask; renumber them 1..2") as err:
        read_mask(ids)
    assert "threshold" not in str(err.value)


# ------------------------------------------------------------------ in-memory videos


@pytest.mark.parametrize("video", [np.zeros((4, 8, 8), np.uint8), torch.zeros(4, 8, 8, dtype=torch.uint8)])
def test_a_grey_video_of_shape_t_h_w_gets_the_hint_to_repeat_it_to_rgb(video):
    with pytest.raises(InvalidInputError, match=r"It looks like a grey video \(T, H, W\): repeat it to RGB") as err:
        read_video(video)
    assert "video[None]" not in str(err.value)
    fix = str(err.value).rpartition("repeat it to RGB, ")[2].rstrip(".")
    fixed = eval(fix, {"np": np, "video": video})  # the hint, run as written
    assert read_video(fixed).size == (8, 8)


def test_a_uint16_video_gets_a_hint_that_scales_it_rather_than_wrapping_it():
    video = np.full((2, 4, 4, 3), 65535, np.uint16)
    with pytest.raises(InvalidTypeError, match=r"16-bit: scale them to 8 bits \(a cast would wrap them\)") as err:
        read_video(video)
    assert "video.astype(np.uint8)" not in str(err.value)
    fix = str(err.value).partition("e.g. ")[2].partition(" (12-bit")[0]
    assert read_video(eval(fix, {"np": np, "video": video}))[0].max() == 255  # white stays white


def test_a_float_video_a_little_above_one_is_read_as_zero_one_with_a_warning(caplog):
    video = np.linspace(0, 1.02, 2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    with caplog.at_level(logging.WARNING, logger="tcore.io.video"):
        frames = read_video(video)
    assert "values lie in [0, 1.02], a little outside [0, 1]" in caplog.text and "clipped" in caplog.text
    np.testing.assert_array_equal(frames[1], np.clip(np.rint(video[1] * 255), 0, 255).astype(np.uint8))
    assert frames[1].max() == 255  # not read as a nearly black [0, 255] video


# ------------------------------------------------------------------ write errors


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "free some space"), (errno.EACCES, "write to a folder you can")])
def test_a_full_disk_or_a_refused_write_names_the_file(tmp_path, monkeypatch, code, fix):
    def refuse(self, path, *args, **kwargs):
        raise OSError(code, "refused by the test")

    monkeypatch.setattr(Image.Image, "save", refuse)
    with pytest.raises(FileAccessError, match=rf"could not write '{tmp_path / 'masks' / '00000.png'}': .*\(errno "
                                              rf"{code}\); {fix}"):
        write_masks(tmp_path / "masks", np.ones((2, 4, 4), np.uint8))
    with pytest.raises(FileAccessError, match=rf"could not write '{tmp_path / 'summary.json'}'"):
        write_atomic(tmp_path / "summary.json", lambda tmp: refuse(None, tmp))
    assert list(tmp_path.glob(".summary.json*")) == []


def test_a_write_error_that_is_not_the_users_stays_as_it_is(tmp_path):
    def broken(tmp):
        raise OSError(errno.EBADF, "a bug")

    with pytest.raises(OSError, match="a bug") as err:
        write_atomic(tmp_path / "x.json", broken)
    assert not isinstance(err.value, FileAccessError)
