"""Video reading (`tcore.read_video`) and overlays (`tcore.write_overlay`): synthetic and real data."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import shared_path
from PIL import Image

import tcore
from tcore.io import FrameReadError, VideoFrames, overlay, read_video, write_overlay


def _clip(t: int = 4, h: int = 24, w: int = 32) -> np.ndarray:
    """(T, H, W, 3) uint8 frames whose pixels encode their frame index and position."""
    rng = np.random.default_rng(t * 1000 + h * 10 + w)
    return rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def _smooth_clip(t: int, h: int, w: int) -> np.ndarray:
    """(T, H, W, 3) uint8 gradients whose brightness grows with the frame index (codec friendly)."""
    ramp = np.linspace(0, 60, w, dtype=np.float32)[None, :, None]
    level = 30 + 150 * np.arange(t, dtype=np.float32)[:, None, None, None] / max(t - 1, 1)
    return np.broadcast_to(level + ramp[None], (t, h, w, 3)).astype(np.uint8).copy()


def _write_frames(folder: Path, frames: np.ndarray, names: list[str], fmt: str = "png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for frame, name in zip(frames, names):
        Image.fromarray(frame).save(folder / f"{name}.{fmt}")


def _write_mp4(path: Path, frames: np.ndarray, fps: int = 12) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


# ---------------------------------------------------------------- frame folders


def test_folder_sorts_frames_by_the_number_in_their_names(tmp_path):
    frames = _clip(t=4)
    _write_frames(tmp_path, frames, ["10", "2", "1", "33"])
    video = read_video(tmp_path)
    assert video.names == ["1", "2", "10", "33"]
    np.testing.assert_array_equal(video[0], frames[2])
    np.testing.assert_array_equal(video[2], frames[0])
    np.testing.assert_array_equal(video[-1], frames[3])


def test_folder_sorts_text_names_naturally_and_ignores_other_files(tmp_path):
    _write_frames(tmp_path, _clip(t=3), ["frame_10", "frame_9", "frame_100"], fmt="jpg")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "._frame_1.jpg").write_bytes(b"macOS resource fork")
    (tmp_path / "sub").mkdir()
    video = read_video(str(tmp_path))
    assert video.names == ["frame_9", "frame_10", "frame_100"]
    assert len(video) == 3 and video.size == (24, 32) and video.fps is None


def test_folder_reads_every_image_format_and_makes_grey_and_rgba_frames_rgb(tmp_path):
    rgb = _clip(t=1)[0]
    Image.fromarray(rgb).convert("L").save(tmp_path / "00000.bmp")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "00001.webp", lossless=True)
    Image.fromarray(rgb).save(tmp_path / "00002.tif")
    video = read_video(tmp_path)
    assert [frame.shape for frame in video] == [(24, 32, 3)] * 3
    grey = video[0]
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    np.testing.assert_array_equal(video[1], rgb)
    np.testing.assert_array_equal(video[2], rgb)


def test_corrupt_frame_in_a_folder_names_its_index_and_file(tmp_path):
    _write_frames(tmp_path, _clip(t=4), [f"{i:05d}" for i in range(4)], fmt="jpg")
    (tmp_path / "00002.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    video = read_video(tmp_path)
    assert video[1].shape == (24, 32, 3)
    with pytest.raises(FrameReadError, match=r"frame 2 \(.*00002\.jpg\) could not be read"):
        list(video)


def test_threaded_decoding_of_a_folder_gives_the_frames_in_order(tmp_path):
    frames = _clip(t=23)
    _write_frames(tmp_path, frames, [f"{i:05d}" for i in range(23)])
    video = read_video(tmp_path)
    assert video.decodes_independently and video[3:].decodes_independently
    decoded = list(video.iter_threaded(workers=4, ahead=5))
    assert len(decoded) == 23 and all(np.array_equal(a, b) for a, b in zip(decoded, frames))
    assert all(np.array_equal(a, b) for a, b in zip(video[3:].iter_threaded(workers=3), frames[3:]))


def test_threaded_decoding_raises_the_bad_frames_error_after_the_good_frames(tmp_path):
    _write_frames(tmp_path, _clip(t=6), [f"{i:05d}" for i in range(6)], fmt="jpg")
    (tmp_path / "00004.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    seen = []
    with pytest.raises(FrameReadError, match=r"frame 4 \(.*00004\.jpg\) could not be read"):
        for frame in read_video(tmp_path).iter_threaded(workers=3, ahead=4):
            seen.append(frame)
    assert len(seen) == 4


def test_in_memory_frames_are_not_decoded_in_threads():
    video = read_video(_clip(t=3))
    assert not video.decodes_independently
    assert all(np.array_equal(a, b) for a, b in zip(video.iter_threaded(workers=4), _clip(t=3)))


def test_frame_of_another_size_names_both_sizes(tmp_path):
    _write_frames(tmp_path, _clip(t=2, h=24, w=32), ["0", "1"])
    Image.fromarray(_clip(t=1, h=20, w=30)[0]).save(tmp_path / "2.png")
    video = read_video(tmp_path)
    with pytest.raises(FrameReadError, match=r"frame 2 .*\(20, 30\).*\(24, 32\)"):
        video[2]


def test_empty_folder_is_an_error_that_names_what_it_found(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds no frames.*'clip\.mp4'"):
        read_video(tmp_path)


def test_two_frames_with_one_name_are_an_error(tmp_path):
    _write_frames(tmp_path, _clip(t=1), ["00001"], fmt="png")
    _write_frames(tmp_path, _clip(t=1), ["00001"], fmt="jpg")
    with pytest.raises(ValueError, match="two images named '00001'"):
        read_video(tmp_path)


def test_missing_path_and_single_image_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such frame folder or video file"):
        read_video(tmp_path / "nope")
    _write_frames(tmp_path, _clip(t=1), ["00000"])
    with pytest.raises(ValueError, match="single image.*Pass the folder"):
        read_video(tmp_path / "00000.png")


# ---------------------------------------------------------------- in-memory videos


def test_uint8_array_is_read_lazily_with_zero_padded_names():
    frames = _clip(t=3)
    video = read_video(frames)
    assert len(video) == 3 and video.size == (24, 32) and video.names == ["00000", "00001", "00002"]
    np.testing.assert_array_equal(np.stack(list(video)), frames)


def test_float_array_in_unit_range_is_scaled_to_uint8():
    frames = _clip(t=2)
    np.testing.assert_array_equal(read_video(frames / 255.0)[1], frames[1])


@pytest.mark.parametrize("scale", [1.0, 255.0], ids=["0-255", "0-1"])
def test_float_tensor_in_either_range_gives_the_same_uint8_frames(scale):
    frames = _clip(t=2)
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / scale  # (T, 3, H, W)
    video = read_video(tensor)
    assert video.size == (24, 32)
    np.testing.assert_array_equal(video[0], frames[0])
    np.testing.assert_array_equal(video[-1], frames[-1])


def test_uint8_tensor_is_read_channels_first():
    frames = _clip(t=2)
    video = read_video(torch.from_numpy(frames).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(video[1], frames[1])
    assert video[1].flags.c_contiguous


@pytest.mark.parametrize("bad, message", [
    (torch.full((1, 3, 4, 4), float("nan")), "NaN"),
    (-torch.ones(1, 3, 4, 4), r"\[-1, -1\].*normalisation"),
    (torch.full((1, 3, 4, 4), 300.0), r"\[300, 300\]"),
])
def test_float_tensor_with_nan_negative_or_huge_values_is_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        read_video(bad)


@pytest.mark.parametrize("bad, hint", [
    (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "permute"),
    (np.zeros((2, 3, 8, 8), np.uint8), "transpose"),
    (torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8), "batch dimension"),
    (np.zeros((8, 8, 3), np.uint8), r"video\[None\]"),
])
def test_wrong_layout_error_says_how_to_fix_it(bad, hint):
    with pytest.raises(ValueError, match=hint):
        read_video(bad)


def test_integer_array_of_other_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="astype"):
        read_video(np.zeros((1, 4, 4, 3), np.int64))


def test_pil_list_is_converted_to_rgb_and_checked_for_size():
    frames = _clip(t=2)
    images = [Image.fromarray(frames[0]).convert("RGBA"), Image.fromarray(frames[1])]
    video = read_video(images)
    np.testing.assert_array_equal(video[0], frames[0])
    assert video[1].shape == (24, 32, 3)
    mixed = read_video([Image.fromarray(frames[0]), Image.new("RGB", (10, 10))])
    with pytest.raises(FrameReadError, match=r"frame 1 .*\(10, 10\).*\(24, 32\)"):
        mixed[1]


def test_unsupported_source_type_is_a_type_error():
    with pytest.raises(TypeError, match="frame folder, a video file"):
        read_video(42)
    with pytest.raises(TypeError, match=r"source\[1\]"):
        read_video([Image.new("RGB", (4, 4)), "00001.jpg"])


def test_indexing_accepts_numpy_ints_and_slices_and_rejects_out_of_range():
    frames = _clip(t=5)
    video = read_video(frames)
    np.testing.assert_array_equal(video[np.int64(3)], frames[3])
    part = video[1::2]
    assert isinstance(part, VideoFrames) and len(part) == 2 and part.names == ["00001", "00003"]
    np.testing.assert_array_equal(part[1], frames[3])
    with pytest.raises(IndexError, match="out of range for a video of 5 frames"):
        video[5]
    with pytest.raises(TypeError, match="must be an int or a slice"):
        video[1.0]


# ---------------------------------------------------------------- video files


def test_mp4_is_streamed_and_indexed_forward_and_backward(tmp_path):
    frames = _smooth_clip(t=6, h=32, w=48)
    _write_mp4(tmp_path / "clip.mp4", frames)
    video = read_video(tmp_path / "clip.mp4")
    assert len(video) == 6 and video.size == (32, 48) and video.fps == pytest.approx(12.0)
    assert video.names[-1] == "00005"
    streamed = list(video)
    assert len(streamed) == 6 and all(f.dtype == np.uint8 and f.shape == (32, 48, 3) for f in streamed)
    for i in (4, 5, 1, -1):  # forward, then backward (re-open), then forward again
        np.testing.assert_array_equal(video[i], streamed[i])
    errors = [[np.abs(f.astype(int) - g).mean() for g in frames] for f in streamed]
    assert np.argmin(errors, axis=1).tolist() == list(range(6))  # lossy, but each frame in its place
    assert max(min(row) for row in errors) < 8
    video.close()


def test_video_with_a_display_rotation_is_read_upright(tmp_path):
    av = pytest.importorskip("av")
    frames = np.zeros((2, 16, 32, 3), np.uint8)
    frames[:, :8, :8] = 255  # a white block at the top left of a landscape frame
    with av.open(str(tmp_path / "phone.mp4"), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = 16, 32, "yuv420p"
        stream.set_display_rotation(90)  # shown turned a quarter counter-clockwise
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    video = read_video(tmp_path / "phone.mp4")
    assert video.size == (32, 16) and video[1].shape == (32, 16, 3)
    assert video[0][-6:, :6].min() > 200 and video[0][:6, :6].max() < 50  # top left -> bottom left


def test_video_without_a_frame_count_is_counted_by_demuxing(tmp_path):
    av = pytest.importorskip("av")
    frames = _clip(t=5, h=16, w=16)
    with av.open(str(tmp_path / "clip.mkv"), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = 16, 16, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    video = read_video(tmp_path / "clip.mkv")
    assert len(video) == 5 and len(list(video)) == 5


def test_video_shorter_than_its_header_says_fails_at_the_first_missing_frame(tmp_path):
    _write_mp4(tmp_path / "clip.mp4", _smooth_clip(t=3, h=16, w=16))
    video = read_video(tmp_path / "clip.mp4")
    video._len = 5  # what a truncated file's header would declare
    with pytest.raises(FrameReadError, match="frame 3 .*ends after 3 frames but its header declares 5"):
        list(video)
    with pytest.raises(FrameReadError, match="frame 3 "):
        video[4]


def test_video_file_reader_pickles_without_its_open_file(tmp_path):
    _write_mp4(tmp_path / "clip.mp4", _clip(t=3, h=16, w=16))
    video = read_video(tmp_path / "clip.mp4")
    first = video[0]
    clone = pickle.loads(pickle.dumps(video))
    np.testing.assert_array_equal(clone[0], first)


def test_file_that_is_not_a_video_names_the_file(tmp_path):
    pytest.importorskip("av")
    (tmp_path / "notes.mp4").write_text("hello")
    with pytest.raises(ValueError, match="notes.mp4.*could not be opened as a video"):
        read_video(tmp_path / "notes.mp4")


def test_missing_pyav_error_names_the_video_extra(tmp_path, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "tcore\[video\]"'):
        read_video(tmp_path / "clip.mp4")
    with pytest.raises(ImportError, match=r"tcore\[video\]"):
        write_overlay(tmp_path / "out.mp4", _clip(t=1), np.zeros((1, 24, 32), np.uint8))
    assert not (tmp_path / "out.mp4").exists()


def test_importing_tcore_io_loads_neither_pyav_nor_torch():
    import subprocess

    code = "import sys, tcore, tcore.io; tcore.read_video; print('av' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- overlays


def test_overlay_blends_the_fill_and_draws_an_opaque_outline():
    frame = np.full((48, 48, 3), 100, np.uint8)
    ids = np.zeros((48, 48), np.uint8)
    ids[10:30, 10:30] = 1
    palette = np.array([[0, 0, 0], [200, 0, 0]])
    out = overlay(frame, ids, palette, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (48, 48, 3)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # background untouched
    np.testing.assert_array_equal(out[20, 20], [150, 50, 50])  # fill: half frame, half colour
    np.testing.assert_array_equal(out[10, 20], [200, 0, 0])  # outline: the colour itself
    np.testing.assert_array_equal(out[9, 20], [100, 100, 100])  # the outline stays inside


def test_overlay_rejects_a_mask_of_another_size_and_a_bad_alpha():
    frame = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(8, 8\)"):
        overlay(frame, np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        overlay(frame, np.zeros((8, 8), np.uint8), alpha=2.0)


def test_write_overlay_gif_streams_frames_and_is_readable(tmp_path):
    frames = _clip(t=4, h=24, w=32)
    masks = np.zeros((4, 24, 32), np.uint8)
    masks[:, 5:15, 5:20] = 2
    out = write_overlay(tmp_path / "o.gif", iter(frames), iter(masks), fps=20)
    with Image.open(out) as gif:
        assert gif.n_frames == 4 and gif.size == (32, 24)
        assert gif.info["duration"] == 50 and gif.info["loop"] == 0
        gif.seek(3)
        picture = np.asarray(gif.convert("RGB"))
    expected = overlay(frames[3], masks[3])
    assert np.abs(picture.astype(int) - expected).mean() < 12  # 256-colour quantisation


def test_write_overlay_mp4_has_every_frame_and_even_size(tmp_path):
    pytest.importorskip("av")
    frames = _clip(t=5, h=25, w=33)  # odd sizes: cropped to even
    masks = [(t, np.eye(25, 33, dtype=np.uint8)) for t in range(5)]  # (t, mask) pairs, as streamed
    out = write_overlay(tmp_path / "o.mp4", read_video(frames), masks, fps=8)
    video = read_video(out)
    assert len(video) == 5 and video.size == (24, 32) and video.fps == pytest.approx(8.0)


def test_write_overlay_counts_must_match(tmp_path):
    frames = _clip(t=3)
    with pytest.raises(ValueError, match="fewer masks than frames"):
        write_overlay(tmp_path / "o.gif", frames, np.zeros((2, 24, 32), np.uint8))
    with pytest.raises(ValueError, match="more masks than frames"):
        write_overlay(tmp_path / "o.gif", frames, np.zeros((4, 24, 32), np.uint8))
    assert not (tmp_path / "o.gif").exists()
    with pytest.raises(ValueError, match=r"\.gif or one of"):
        write_overlay(tmp_path / "o.png", frames, np.zeros((3, 24, 32), np.uint8))


# ---------------------------------------------------------------- real data


def test_davis_frame_folder_is_read_with_its_frame_names():
    folder = shared_path("data", "davis", "JPEGImages", "480p", "bmx-trees")
    video = tcore.read_video(folder)
    assert len(video) == 25 and video.size == (480, 854)
    assert video.names[:2] == ["00000", "00001"] and video.names[-1] == "00024"
    assert video[24].shape == (480, 854, 3) and video[24].dtype == np.uint8


def test_realshort_mp4_decodes_36_frames_of_320x240():
    video = tcore.read_video(shared_path("data", "videos", "realshort.mp4"))
    assert len(video) == 36 and video.size == (240, 320)
    frames = list(video)
    assert len(frames) == 36 and frames[35].shape == (240, 320, 3)
    np.testing.assert_array_equal(video[20], frames[20])


def test_apple_mp4_streams_50_frames_of_1296x720_at_10_fps():
    video = tcore.read_video(shared_path("data", "videos", "apple.mp4"))
    assert len(video) == 50 and video.size == (720, 1296) and video.fps == pytest.approx(10.0)
    count = 0
    for frame in video:
        assert frame.shape == (720, 1296, 3)
        count += 1
    assert count == 50


def test_real_overlay_of_a_davis_clip_as_gif(tmp_path):
    frames = tcore.read_video(shared_path("data", "davis", "JPEGImages", "480p", "car-shadow"))[:3]
    masks = (tcore.read_mask(shared_path("data", "davis", "Annotations", "480p", "car-shadow", f"{n}.png"))[0]
             for n in frames.names)
    out = write_overlay(tmp_path / "car.gif", frames, masks)
    with Image.open(out) as gif:
        assert gif.n_frames == 3 and gif.size == (854, 480)
