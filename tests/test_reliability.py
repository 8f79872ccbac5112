"""Issue 9 through the API: no silent wrong input, bounded working size, devices and checkpoints
named clearly. (The command line's bad inputs are in test_cli_bad_inputs.py; one writer per
results folder is in test_evaluation_lock.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

import tcore
from tcore.errors import InsufficientMemoryError, InvalidInputError
from tcore.io import FrameReadError, read_mask, read_video

# ------------------------------------------------------------------ 1. frames of every image mode

_GRADIENT16 = (np.arange(24 * 32, dtype=np.uint32).reshape(24, 32) * 85).astype(np.uint16)  # 0 .. 65195


def test_16bit_png_frames_are_scaled_by_257_not_read_as_white(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(2):
        Image.fromarray(_GRADIENT16).save(folder / f"{t:05d}.png")
    assert Image.open(folder / "00000.png").mode == "I;16"
    frame = read_video(folder)[0]
    expected = np.rint(_GRADIENT16 / 257.0).astype(np.uint8)
    assert frame.dtype == np.uint8 and frame.shape == (24, 32, 3)
    np.testing.assert_array_equal(frame, np.repeat(expected[..., None], 3, axis=2))
    assert frame.min() == 0 and 250 <= frame.max() <= 255  # the range, not a blank white frame


_EIGHT_BIT_MODES = ["1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV", "LA", "PA"]
_SIXTEEN_BIT_MODES = ["I;16", "I;16B", "I;16L", "I;16N", "I"]
_REFUSED_MODES = ["F", "LAB", "La"]


def _image_in_mode(mode: str) -> Image.Image:
    rgb = np.random.default_rng(0).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray(_GRADIENT16[:6, :8]).convert(mode) if mode == "I" else \
            Image.frombytes(mode, (8, 6), _GRADIENT16[:6, :8].astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    return Image.fromarray(rgb).convert(mode) if mode not in ("La", "LAB", "F") else Image.new(mode, (8, 6))


@pytest.mark.parametrize("mode", _EIGHT_BIT_MODES + _SIXTEEN_BIT_MODES + _REFUSED_MODES)
def test_every_pil_mode_is_read_right_or_refused_naming_the_mode(mode):
    image = _image_in_mode(mode)
    assert image.mode == mode
    if mode in _REFUSED_MODES:
        with pytest.raises(FrameReadError, match=rf"frame 0 \(source\[0\]\): PIL image mode '{mode}'.*8-bit RGB"):
            read_video([image, image])[0]
        return
    frame = read_video([image, image])[0]
    if mode in _SIXTEEN_BIT_MODES:
        expected = np.repeat(np.rint(_GRADIENT16[:6, :8] / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    else:
        expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(frame, expected)


def test_32bit_integer_frames_outside_the_16bit_range_are_refused():
    image = Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I")
    with pytest.raises(FrameReadError, match=r"values in \[0, 70000\].*16-bit"):
        read_video([image, image])[0]


# ------------------------------------------------------------------ 2. anti-aliased colour masks


def _disc(size=(150, 200), colour=(255, 0, 0)) -> Image.Image:
    image = Image.new("RGB", size[::-1])
    ImageDraw.Draw(image).ellipse((40, 30, 160, 120), fill=colour)
    return image


def test_an_anti_aliased_rgb_mask_is_refused_with_the_count_and_the_fix():
    soft = _disc().filter(ImageFilter.GaussianBlur(4))  # one red object, a soft brush
    n_colours = len(np.unique(np.asarray(soft).reshape(-1, 3), axis=0)) - 1  # without black
    assert 100 < n_colours <= 254  # few enough to pass the 254-colour limit
    with pytest.raises(ValueError, match=rf"anti-aliased.*{n_colours} distinct colours.*"
                                         r"without anti-aliasing.*palette PNG.*threshold=38,") as err:
        read_mask(soft)
    assert "blends" in str(err.value)  # red 255 has luminance 76: threshold=128 would find no object
    ids, _ = read_mask(soft, threshold=38)  # the fix it names works
    assert set(np.unique(ids)) == {0, 1}


def test_a_bilinear_resized_rgb_mask_is_refused_too():
    hard = _disc()
    ImageDraw.Draw(hard).rectangle((10, 10, 60, 50), fill=(0, 255, 0))
    with pytest.raises(ValueError, match="anti-aliased"):
        read_mask(hard.resize((97, 71), Image.BILINEAR))
    ids, _ = read_mask(hard.resize((97, 71), Image.NEAREST))  # hard edges: two objects
    assert set(np.unique(ids)) == {0, 1, 2}


def test_hard_rgb_masks_with_touching_objects_and_single_pixels_are_ids():
    image = _disc()
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 60, 50), fill=(0, 255, 0))
    draw.rectangle((50, 40, 100, 80), fill=(0, 0, 255))  # overlaps both others
    image.putpixel((190, 5), (128, 0, 0))  # a one-pixel object between nothing but background
    image.putpixel((5, 140), (64, 0, 0))
    ids, _ = read_mask(image)
    assert set(np.unique(ids)) == {0, 1, 2, 3, 4, 5}


# ------------------------------------------------------------------ 3. objects lost at the working grid


def _hundred_objects(shape=(120, 200)) -> Image.Image:
    """A palette mask of 100 objects of random sizes (3..11 x 3..19 pixels), one per 12x20 block."""
    rng = np.random.default_rng(0)
    ids = np.zeros(shape, np.uint8)
    for k in range(100):
        r, c = divmod(k, 10)
        ids[r * 12:r * 12 + rng.integers(3, 12), c * 20:c * 20 + rng.integers(3, 20)] = k + 1
    image = Image.fromarray(ids)
    image.putpalette(tcore.io.DAVIS_PALETTE.tobytes())
    return image


def _lost_in_frame_0(out: np.ndarray) -> list[int]:
    return sorted(set(range(1, 101)) - set(np.unique(out[0]).tolist()))


def test_objects_lost_at_the_working_grid_are_named_with_a_size_that_keeps_them(tiny_backbone, caplog):
    frames = np.random.default_rng(1).integers(0, 256, (2, 120, 200, 3), dtype=np.uint8)
    kwargs = dict(model=tiny_backbone, device="cpu", progress=False)
    with caplog.at_level("WARNING", logger="tcore.propagation.api"):
        out = tcore.propagate_masks(frames, _hundred_objects(), size=(112, 208), **kwargs)  # a 7x13 grid
    lost = _lost_in_frame_0(out)
    assert len(lost) > 30
    (record,) = caplog.records
    message = record.getMessage()
    shown = ", ".join(map(str, lost[:20]))
    assert message.startswith(f"{len(lost)} of 100 objects (ids {shown}, ...) cover no cell of the 7x13 feature "
                              "grid of the working size 112x208 at annotated frame 0")
    size = tuple(int(v) for v in message.split("size=(")[1].split(")")[0].split(", "))
    assert f"--size {size[0]} {size[1]}" in message and size[0] > 112 and size[1] > 208
    caplog.clear()
    with caplog.at_level("WARNING", logger="tcore.propagation.api"):
        out = tcore.propagate_masks(frames, _hundred_objects(), size=size, **kwargs)  # the size it suggests
    assert _lost_in_frame_0(out) == [] and caplog.records == []


# ------------------------------------------------------------------ 5. the working-size guard


def _thin_frames(tmp_path) -> tuple[str, np.ndarray]:
    """Two 16x2000 PNG frames whose decoding fails the test (the guard must fire before it)."""
    folder = tmp_path / "thin"
    folder.mkdir()
    for t in range(2):
        Image.fromarray(np.full((16, 2000, 3), 40 * t, np.uint8)).save(folder / f"{t:05d}.png")
    mask = np.zeros((16, 2000), np.uint8)
    mask[4:12, 100:400] = 1
    return str(folder), mask


@pytest.fixture
def undecoded(tmp_path, monkeypatch) -> tuple[str, np.ndarray, list[int]]:
    """`_thin_frames`, and the list of the frames decoded from it (a guard must leave it empty)."""
    from tcore.io.video import _FolderFrames

    decoded: list[int] = []
    monkeypatch.setattr(_FolderFrames, "_frame", lambda self, i: decoded.append(i))
    return (*_thin_frames(tmp_path), decoded)


def test_an_extreme_aspect_ratio_stops_before_decoding_with_a_size_that_fits(undecoded, tiny_backbone):
    folder, mask, decoded = undecoded
    with pytest.raises(ValueError, match=r"frames of 16x2000 \(HxW\) get the working size 480x60000 .*30x3750 = "
                                         r"112500 patch tokens per frame, above the limit of 16384.*"
                                         r"size=\(176, 22896\).*--size 176 22896") as err:
        tcore.propagate_masks(folder, mask, model=tiny_backbone, device="cpu", progress=False)
    assert decoded == [] and "explicit size is used as given" in str(err.value)


def test_a_size_with_fewer_grid_cells_than_the_top_k_names_a_size_for_python_and_the_command_line(undecoded,
                                                                                                  tiny_backbone):
    folder, mask, decoded = undecoded
    with pytest.raises(InvalidInputError, match=r"the working size 16x16 gives a 1x1 feature grid \(1 cell of 16x16 "
                                                r"pixels\), fewer than the 7 keys .* at least size=\(48, 48\) "
                                                r"\(command line: --size 48 48\)"):
        tcore.propagate_masks(folder, mask, model=tiny_backbone, size=(16, 16), device="cpu", progress=False)
    assert decoded == []


def test_a_size_that_cannot_fit_in_memory_stops_before_decoding_with_an_estimate(undecoded, tiny_backbone):
    folder, mask, decoded = undecoded
    with pytest.raises(InsufficientMemoryError, match=r"working size 100000x100000 has 6250x6250 = 39062500 patch "
                                                      r"tokens per frame and needs at least [\d,.]+ GB .*more than the "
                                                      r"[\d,.]+ GB this cpu device has; pass a smaller size, e.g. "
                                                      r"size=\(\d+, \d+\) \(command line: --size \d+ \d+\)"):
        tcore.propagate_masks(folder, mask, model=tiny_backbone, size=(100000, 100000), device="cpu", progress=False)
    assert decoded == []


def test_an_explicit_size_is_obeyed_whatever_its_token_count(tmp_path, tiny_backbone):
    from tcore.propagation.presets import PRESETS, working_size

    folder, mask = _thin_frames(tmp_path)
    out = tcore.propagate_masks(folder, mask, model=tiny_backbone, size=(16, 2000), device="cpu", progress=False)
    assert out.shape == (2, 16, 2000)
    assert working_size((16, 2000), PRESETS["default"], 16, size=(480, 60000)) == (480, 60000)


# ------------------------------------------------------------------ 7. devices

_NO_CUDA = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")


@pytest.mark.parametrize("device", ["gpu", pytest.param("cuda", marks=_NO_CUDA), pytest.param("cuda:7", marks=_NO_CUDA)])
def test_a_device_that_is_not_there_is_named_with_the_available_ones_before_loading(device, tiny_backbone):
    from tcore.devices import available_devices

    listed = rf"available here: {', '.join(available_devices())}"
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 1
    with pytest.raises(ValueError, match=rf"^device='{device}': .*{listed}"):
        tcore.propagate_masks(frames, mask, device=device, progress=False)  # model=None: would need a download
    with pytest.raises(ValueError, match=rf"^device='{device}': .*{listed}"):
        tcore.load_backbone("tcore_vits16", device=device)
    with pytest.raises(ValueError, match=rf"^device='{device}': .*{listed}"):
        tcore.evaluate("davis", "no-such-dataset", out_dir="unused", device=device)


def test_device_names_torch_knows_and_this_machine_has_are_accepted():
    import torch

    from tcore.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None).index is None  # the best one; under torchrun each rank picks its GPU
    with pytest.raises(TypeError, match="--device: expected a device name"):
        resolve_device(0.5, argument="--device")


# ------------------------------------------------------------------ 8. loading diagnoses


def test_a_folder_without_config_json_is_named_as_such_with_the_checkpoint_in_it(tmp_path, tiny_backbone):
    import torch

    with pytest.raises(FileNotFoundError, match=r"a folder without config.json.*it is empty"):
        tcore.load_backbone(tmp_path)
    torch.save(tiny_backbone.state_dict(), tmp_path / "teacher.pth")
    with pytest.raises(FileNotFoundError, match=rf"pass the file: '{tmp_path / 'teacher.pth'}'"):
        tcore.load_backbone(tmp_path)


@pytest.mark.parametrize("content, kind", [
    (None, "a PNG image"),
    (b"lr: 0.1\nepochs: 100\n", "a text file (it begins 'lr: 0.1')"),
    (b"", "an empty file"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, content, kind):
    path = tmp_path / "model.pth"
    if content is None:
        Image.new("RGB", (4, 4)).save(path, format="PNG")
    else:
        path.write_bytes(content)
    for load in (tcore.load_backbone, lambda p: tcore.tcore_vits16(pretrained=p)):
        with pytest.raises(tcore.CheckpointError) as err:
            load(path)
        assert str(err.value).startswith(f"{path}: {kind}, not a checkpoint; expected a torch checkpoint")
        assert "unpickle" not in str(err.value)


def test_a_dinov2_file_given_to_tcore_vits16_is_not_called_a_tcore_vits16_checkpoint():
    from helpers import shared_path

    dinov2 = shared_path("weights", "dinov2_vits14_imgfocus.safetensors")
    with pytest.raises(tcore.CheckpointError) as err:
        tcore.tcore_vits16(pretrained=dinov2)
    message = str(err.value)
    assert "looks like a tcore_vits16" not in message
    assert "not a T-CoRe checkpoint: patch 14, no 'register_tokens'" in message
    assert "use tcore.load_backbone(path)" in message
    assert tcore.load_backbone(dinov2).patch_size == 14  # the loader it names reads it


def test_a_vitb16_state_given_to_tcore_vits16_still_names_the_right_constructor():
    import torch

    with torch.device("meta"):  # shapes only: nothing is allocated
        state = tcore.tcore_vitb16(pretrained=False).state_dict()
    with pytest.raises(tcore.CheckpointError, match=r"looks like a tcore_vitb16 checkpoint: use tcore.tcore_vitb16"):
        tcore.tcore_vits16(pretrained=state)
