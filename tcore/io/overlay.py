"""Overlays: masks drawn on frames (semi-transparent fill and a crisp outline), as GIF or video.

`write_overlay` streams: one frame and one mask are in memory at a time. GIFs are written with
PIL (each frame with its own 256-colour palette); .mp4/.mov/.mkv/.avi with PyAV (`video` extra).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np
from PIL import GifImagePlugin, Image

from ..errors import InvalidInputError
from ..files import writing
from ._common import describe, is_path, is_tensor
from .masks import _as_palette, _check_ids, _iter_masks
from .video import image_to_rgb, read_video

__all__ = ["VIDEO_SUFFIXES", "overlay", "write_images", "write_overlay"]

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".m4v"})
_DEFAULT_FPS = 10.0


def overlay(frame: Any, ids: Any, palette: Any = None, alpha: float = 0.5) -> np.ndarray:
    """Draw object masks on one frame: each object's colour blended in, and its outline opaque.

    Args:
        frame: uint8 (H, W, 3) RGB array or a PIL image.
        ids: (H, W) integer object ids in [0, 254]; 0 (background) is left untouched.
        palette: colours of the ids, (N, 3) (missing entries are DAVIS colours); None = DAVIS-2017.
        alpha: opacity of the fill, in [0, 1]. The outline (about 1 px per 240 px of the short
            side) is drawn at full opacity, inside each object.

    Returns:
        uint8 (H, W, 3) RGB image.
    """
    rgb = _as_rgb(frame)
    ids = _check_ids(ids, "ids")
    if ids.shape != rgb.shape[:2]:
        raise InvalidInputError(f"ids: mask size (H, W) = {ids.shape} differs from the frame size {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha: expected a fill opacity in [0, 1], got {alpha!r}")
    colours = _as_palette(palette)[ids]  # (H, W, 3)
    inside = ids > 0
    out = rgb.astype(np.float32)
    out[inside] += alpha * (colours[inside] - out[inside])
    outline = inside & _edges(ids, width=max(1, round(min(ids.shape) / 240)))
    out[outline] = colours[outline]
    return np.rint(out).astype(np.uint8)


def _as_rgb(frame: Any) -> np.ndarray:
    if isinstance(frame, Image.Image):
        return image_to_rgb(frame, "frame")
    array = np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInputError(f"frame: expected a uint8 (H, W, 3) RGB image, got {describe(frame)}")
    return array


def _edges(ids: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: pixels with a different id within `width` steps along a row or a column."""
    edge = np.zeros(ids.shape, dtype=bool)
    for d in range(1, width + 1):
        vertical = ids[d:, :] != ids[:-d, :]
        horizontal = ids[:, d:] != ids[:, :-d]
        edge[d:, :] |= vertical
        edge[:-d, :] |= vertical
        edge[:, d:] |= horizontal
        edge[:, :-d] |= horizontal
    return edge


def write_overlay(path: str | Path, frames: Any, masks: Any, palette: Any = None,
                  alpha: float = 0.5, fps: float | None = None) -> Path:
    """Write a video of the masks drawn on the frames (see `overlay`), one frame at a time.

    Args:
        path: output file: ".gif" (PIL) or ".mp4", ".mov", ".mkv", ".avi", ".m4v" (PyAV: H.264 if
            available, else MPEG-4; an odd last row or column is cropped).
        frames: anything `read_video` accepts, or an iterable of uint8 (H, W, 3) frames.
        masks: (T, H, W) ids, or an iterable of (H, W) masks or of (t, mask) pairs, one per frame.
        palette: colours of the ids (e.g. from `read_mask`); None = DAVIS-2017.
        alpha: fill opacity in [0, 1].
        fps: frames per second; default the video's own (`frames.fps`), else 10. GIF frame delays
            are whole hundredths of a second, at least 0.02 s.

    Returns:
        `path`.

    Raises:
        InvalidInputError: an unknown suffix, different numbers of frames and masks, or sizes that differ.
        MissingDependencyError: a video suffix without PyAV (`pip install "tcore[video]"`).
        FileAccessError: a full disk or no permission (names the file), as soon as a write fails.
    """
    _check_suffix(Path(path))
    if is_path(frames) or isinstance(frames, (list, tuple, np.ndarray)) or is_tensor(frames):
        frames = read_video(frames)
    fps = fps if fps is not None else getattr(frames, "fps", None) or _DEFAULT_FPS
    return write_images(path, _overlaid(frames, masks, palette, alpha), fps)


def write_images(path: str | Path, images: Iterable[np.ndarray], fps: float = _DEFAULT_FPS) -> Path:
    """Write RGB pictures as a GIF or a video file, one at a time (no half-written file on error).

    Args:
        path: ".gif" (PIL) or ".mp4", ".mov", ".mkv", ".avi", ".m4v" (PyAV, as `write_overlay`).
        images: uint8 (H, W, 3) RGB arrays, all of one size.
        fps: frames per second, > 0.

    Returns:
        `path`.

    Raises:
        InvalidInputError: an unknown suffix, no images, images of different sizes or a bad fps.
        MissingDependencyError: a video suffix without PyAV (`pip install "tcore[video]"`).
        FileAccessError: a full disk or no permission (names the file), as soon as a write fails.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    if not fps > 0:
        raise InvalidInputError(f"fps: expected a positive number of frames per second, got {fps!r}")
    with writing(path):
        _write_images(path, suffix, images, fps)
    return path


def _write_images(path: Path, suffix: str, images: Iterable[np.ndarray], fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if suffix == ".gif":
            with open(path, "wb") as fp:
                _write_gif(fp, iter(images), fps)
        else:
            from ._pyav import write_video

            write_video(path, images, fps)
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written file
        raise


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix != ".gif" and suffix not in VIDEO_SUFFIXES:
        raise InvalidInputError(f"path: cannot tell the format of {str(path)!r}; end it with .gif or one of "
                                f"{', '.join(sorted(VIDEO_SUFFIXES))}")
    return suffix


def _overlaid(frames: Iterable[Any], masks: Any, palette: Any, alpha: float) -> Iterator[np.ndarray]:
    """Overlay images of frames and masks taken in step; an error if their counts differ."""
    colours = _as_palette(palette)
    pending = _iter_masks(masks)
    count = 0
    for count, frame in enumerate(frames, start=1):
        item = next(pending, None)
        if item is None:
            raise InvalidInputError(f"masks: no mask for frame {count - 1}: there are fewer masks than frames")
        yield overlay(frame, item[1], colours, alpha)
    if next(pending, None) is not None:
        raise InvalidInputError(f"masks: more masks than frames ({count} frames)")


def _write_gif(fp: BinaryIO, images: Iterator[np.ndarray], fps: float) -> None:
    """Stream an endlessly looping GIF: a header, then each frame with its own palette."""
    centiseconds = max(2, round(100 / fps))
    count = 0
    for count, rgb in enumerate(images, start=1):
        if count == 1:
            size = rgb.shape[:2]
            fp.write(b"GIF89a" + struct.pack("<HHBBB", size[1], size[0], 0x70, 0, 0))  # no global palette
            fp.write(b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00")  # loop forever
        elif rgb.shape[:2] != size:
            raise InvalidInputError(f"frames: frame {count - 1} has size {rgb.shape[:2]} but frame 0 has {size}")
        image = Image.fromarray(rgb).quantize(256, method=Image.Quantize.FASTOCTREE)
        for chunk in GifImagePlugin.getdata(image, duration=centiseconds * 10, include_color_table=True):
            fp.write(chunk)
    if count == 0:
        raise InvalidInputError("frames: nothing to write (no frames given)")
    fp.write(b";")
