"""Lazy video reading: `read_video(source)` gives a `VideoFrames` sequence of RGB frames.

Every source decodes one frame at a time: indexing reads one frame, iteration streams, and memory
stays at a few frames whatever the video's length. Sources:

- a folder of frames (jpg, jpeg, png, bmp, webp, tif, tiff), in natural order of the file stems
  ("2.jpg" before "10.jpg"), each upright (its EXIF orientation applied, as viewers show it); an
  image of another format (gif, heic, avif, ...) is refused by name rather than skipped; other
  files and hidden files (".DS_Store", "._0001.jpg") are ignored;
- a video file (mp4, webm, avi, mov, mkv, ...), decoded with PyAV (the `video` extra);
- a list or tuple of PIL images or (H, W, 3) uint8 arrays;
- a numpy array (T, H, W, 3) or a torch tensor (T, 3, H, W): uint8 in [0, 255], or float in [0, 1].
  A float video a little outside [0, 1] (within `FLOAT_SLACK`, e.g. the overshoot of a bicubic
  resize: values in [-0.03, 1.02]) is read as [0, 1], clipped, with a warning; one whose maximum
  is above 1 + `FLOAT_SLACK` is taken to be in [0, 255] already; NaN, other negative values and
  values above 255 are errors.

Image files and PIL images of every mode are read as 8-bit RGB, or refused (`image_to_rgb`):

- 8-bit modes (RGB, L, P, 1, RGBA/LA/PA: alpha dropped, CMYK, YCbCr, HSV) by PIL's conversion;
- 16-bit grey (I;16, I;16B, ..., e.g. from scientific, depth or infrared cameras) divided by 257,
  so that 0..65535 maps to 0..255 with the same scale in every frame (brightness does not flicker
  from frame to frame). 12-bit data stored in 16 bits therefore looks dark: multiply it by 16
  first. 32-bit integer ("I", what old Pillow makes of 16-bit PNGs) is read the same way when its
  values lie in 0..65535, and refused otherwise;
- 32-bit float ("F") and CIELab ("LAB") are refused: their range or colour space is not known here.
  Convert such frames to 8-bit RGB first.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import InvalidInputError, InvalidTypeError, MissingFileError
from ._common import as_numpy, describe, is_path, is_tensor, natural_key
from ._images import image_size, read_image
from .frames import FrameReadError, VideoFrames

__all__ = ["FLOAT_SLACK", "IMAGE_SUFFIXES", "UNREAD_IMAGE_SUFFIXES", "FrameReadError", "VideoFrames", "image_to_rgb",
           "read_video"]

_logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# Image formats a frame folder may hold that are not read as frames: refused by name, never skipped.
UNREAD_IMAGE_SUFFIXES = frozenset({".gif", ".heic", ".heif", ".avif", ".jxl", ".jfif", ".jpe", ".jp2", ".j2k",
                                   ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".dng", ".exr", ".psd", ".ico"})
FLOAT_SLACK = 0.1  # a float video within [-0.1, 1.1] is a [0, 1] video that over- or undershoots a little
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_16BIT_TO_8BIT = 257.0  # 65535 / 255: the full 16-bit range onto the full 8-bit range
_REFUSED_MODES = {"F": "32-bit float values of unknown range", "LAB": "CIELab colours"}


def image_to_rgb(image: Image.Image, where: str) -> np.ndarray:
    """A PIL image of any mode as a uint8 (H, W, 3) RGB array (the rules of the module docstring).

    Args:
        image: the image.
        where: what it is, for errors (e.g. "frame 3 (frames/00003.png)").

    Raises:
        FrameReadError: a mode that cannot be read right (32-bit float, CIELab, 32-bit integers
            outside 0..65535, or a mode PIL cannot convert); the message says how to convert it.
    """
    mode = image.mode
    if mode in _16BIT_MODES:
        return _grey16_to_rgb(np.asarray(image), mode, where)
    if mode in _REFUSED_MODES:
        raise FrameReadError(f"{where}: PIL image mode {mode!r} ({_REFUSED_MODES[mode]}) is not read as a frame; "
                             "convert the frames to 8-bit RGB first (e.g. PNG or JPEG)")
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as err:
        raise FrameReadError(f"{where}: PIL image mode {mode!r} cannot be converted to RGB ({err}); convert the "
                             "frames to 8-bit RGB first (e.g. PNG or JPEG)") from err


def _grey16_to_rgb(values: np.ndarray, mode: str, where: str) -> np.ndarray:
    """(H, W) 16-bit grey values -> uint8 (H, W, 3): divided by 257, the same in every frame."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise FrameReadError(f"{where}: PIL image mode {mode!r} with values in [{values.min()}, {values.max()}]; "
                             "integer frames are read as 16-bit (0..65535): convert them to 8-bit RGB first")
    grey = np.rint(values.astype(np.float32) / _16BIT_TO_8BIT).astype(np.uint8)  # (H, W)
    return np.repeat(grey[..., None], 3, axis=2)


class _FolderFrames(VideoFrames):
    """The image files of one folder, in natural order of their stems."""

    decodes_independently = True

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder))
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        self._files = sorted((p for p in files if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
        unread = [p.name for p in sorted(files, key=natural_key) if p.suffix.lower() in UNREAD_IMAGE_SUFFIXES]
        if unread:
            shown = ", ".join(unread[:5]) + (", ..." if len(unread) > 5 else "")
            raise InvalidInputError(
                f"source: the frame folder {str(folder)!r} holds {len(unread)} image(s) in a format not read as "
                f"frames ({shown}) beside {len(self._files)} frame(s); convert them to one of "
                f"{', '.join(sorted(IMAGE_SUFFIXES))} (e.g. PNG), or move them out of the folder")
        if not self._files:
            others = f"; it holds {len(files)} other files, e.g. {files[0].name!r}" if files else ""
            raise InvalidInputError(
                f"source: the folder {str(folder)!r} holds no frames (image files ending in "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}){others}. Pass a folder of frames or a video file.")
        _check_unique_stems(self._files)
        self._size = image_size(self._files[0], f"frame 0 ({self._files[0]})", FrameReadError)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def names(self) -> list[str]:
        return [p.stem for p in self._files]

    def _frame(self, index: int) -> np.ndarray:
        path = self._files[index]
        where = f"frame {index} ({path})"
        return self._check_size(image_to_rgb(read_image(path, where, FrameReadError), where), index, str(path))


def _check_unique_stems(files: list[Path]) -> None:
    """Two frames with one stem ("00001.jpg", "00001.png") would write the same output file."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise InvalidInputError(
                f"source: the frame folder holds two images named {path.stem!r} "
                f"({seen[path.stem].name} and {path.name}); keep one of them")
        seen[path.stem] = path


class _ImageListFrames(VideoFrames):
    """A list of PIL images or (H, W, 3) uint8 arrays, converted to RGB arrays one at a time."""

    def __init__(self, images: Sequence[Any]) -> None:
        super().__init__(f"<list of {len(images)} images>")
        if len(images) == 0:
            raise InvalidInputError("source: the list of frames is empty; a video needs at least one frame")
        for i, item in enumerate(images):
            if not isinstance(item, (Image.Image, np.ndarray)):
                raise InvalidTypeError(f"source[{i}]: a list of frames must hold PIL images or uint8 "
                                       f"(H, W, 3) numpy arrays, got {describe(item)}")
        self._images = list(images)
        first = self._images[0]
        self._size = (first.height, first.width) if isinstance(first, Image.Image) else first.shape[:2]

    def __len__(self) -> int:
        return len(self._images)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def _frame(self, index: int) -> np.ndarray:
        item = self._images[index]
        if isinstance(item, Image.Image):
            return self._check_size(image_to_rgb(item, f"frame {index} (source[{index}])"), index, f"source[{index}]")
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise FrameReadError(f"frame {index} (source[{index}]) must be a uint8 (H, W, 3) RGB "
                                 f"array, got {describe(item)}")
        return self._check_size(item, index, f"source[{index}]")


class _ArrayFrames(VideoFrames):
    """A numpy array (T, H, W, 3) or a torch tensor (T, 3, H, W), uint8 or float."""

    def __init__(self, video: Any) -> None:
        super().__init__(f"<{describe(video)}>")
        self._tensor = is_tensor(video)
        _check_array_layout(video, self._tensor)
        self._video = video
        self._scale = _float_scale(video) if _is_float(video) else None

    def __len__(self) -> int:
        return int(self._video.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        shape = tuple(self._video.shape)
        return (shape[2], shape[3]) if self._tensor else (shape[1], shape[2])

    def _frame(self, index: int) -> np.ndarray:
        frame = self._video[index]
        if self._tensor:
            if self._scale is not None:
                frame = frame.float().mul(self._scale).round().clamp(0, 255).byte()
            frame = frame.permute(1, 2, 0).detach().cpu().numpy()  # (3, H, W) -> (H, W, 3)
        elif self._scale is not None:
            frame = np.clip(np.rint(frame.astype(np.float32) * self._scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(frame)


def _is_float(video: Any) -> bool:
    return bool(video.is_floating_point()) if is_tensor(video) else np.issubdtype(video.dtype, np.floating)


def _check_array_layout(video: Any, tensor: bool) -> None:
    """Check the shape and dtype of an in-memory video; the error says how to fix it."""
    shape = tuple(video.shape)
    expected = "(T, 3, H, W) tensor" if tensor else "(T, H, W, 3) array"
    channels = shape[1] if tensor else shape[-1]
    if len(shape) != 4 or channels != 3 or shape[0] == 0:
        raise InvalidInputError(f"source: expected a non-empty RGB video as a {expected}, got {describe(video)}."
                                f"{_layout_hint(shape, tensor)}")
    if not (_is_float(video) or str(video.dtype) in ("uint8", "torch.uint8")):
        raise InvalidTypeError(f"source: a video {'tensor' if tensor else 'array'} must be uint8 in [0, 255] "
                               f"or float in [0, 1], got {describe(video)}; {_dtype_hint(video, tensor)}")


def _layout_hint(shape: tuple[int, ...], tensor: bool) -> str:
    """How to turn a video of the wrong layout into (T, H, W, 3) / (T, 3, H, W), or ""."""
    grey = (" It looks like a grey video (T, H, W): repeat it to RGB, "
            + ("video[:, None].expand(-1, 3, -1, -1)." if tensor else "np.repeat(video[..., None], 3, axis=-1)."))
    if len(shape) == 5 and shape[0] == 1:
        return " Drop the batch dimension: video[0]."
    if len(shape) == 3:
        if (shape[0] if tensor else shape[-1]) == 3:
            return " For a single frame add a time dimension: video[None]."
        return grey
    if len(shape) == 4 and tensor and shape[-1] == 3:
        return " It looks channels-last: pass video.permute(0, 3, 1, 2)."
    if len(shape) == 4 and not tensor and shape[1] == 3:
        return " It looks channels-first: pass video.transpose(0, 2, 3, 1)."
    if len(shape) == 4 and (shape[1] if tensor else shape[-1]) == 1:
        return (" It looks like a grey video with one channel: repeat it to RGB, "
                + ("video.expand(-1, 3, -1, -1)." if tensor else "np.repeat(video, 3, axis=-1)."))
    return ""


def _dtype_hint(video: Any, tensor: bool) -> str:
    """How to convert an integer video of another dtype to uint8 without wrapping its values."""
    if str(video.dtype) in ("bool", "torch.bool"):
        return "convert it, e.g. " + ("video.to(torch.uint8) * 255" if tensor else "video.astype(np.uint8) * 255")
    values = as_numpy(video)  # torch has no min/max for every integer dtype (uint16)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if 0 <= low and high <= 255:  # the values fit: a plain cast keeps them
        return "its values lie in [0, 255], so convert it: " + ("video.to(torch.uint8)" if tensor
                                                                  else "video.astype(np.uint8)")
    if 0 <= low and high <= 65535:  # 16-bit data: scale it as tcore reads 16-bit images (/ 257), never cast
        return (f"its values lie in [{low:g}, {high:g}], 16-bit: scale them to 8 bits (a cast would wrap them), e.g. "
                + ("(video.float() / 257).round().to(torch.uint8)" if tensor
                   else "np.rint(video / 257).astype(np.uint8)")
                + " (12-bit data: / 16)")
    return (f"its values lie in [{low:g}, {high:g}]: scale them into [0, 255] first (a cast would wrap them), or "
            "pass a float video in [0, 1]")


def _float_scale(video: Any) -> float:
    """255 for a float video in [0, 1] (within `FLOAT_SLACK`), 1 for one in [0, 255] (its maximum is above)."""
    low, high = float(video.min()), float(video.max())
    if math.isnan(low) or math.isnan(high):
        raise InvalidInputError(f"source: the float video ({describe(video)}) contains NaN")
    in_unit, in_bytes = -FLOAT_SLACK <= low and high <= 1 + FLOAT_SLACK, 0 <= low and high <= 255
    if not (in_unit or in_bytes):
        raise InvalidInputError(f"source: a float video must be in [0, 1] (or [0, 255]), got values in "
                                f"[{low:g}, {high:g}]; undo any normalisation (x * std + mean) first")
    if not in_unit:
        return 1.0
    if low < 0 or high > 1:
        _logger.warning("source: the float video's values lie in [%g, %g], a little outside [0, 1] (the overshoot of "
                        "a resize?): it is read as a [0, 1] video, clipped to that range; clip it yourself "
                        "(video.clip(0, 1)) to silence this, or pass a [0, 255] video as uint8", low, high)
    return 255.0


def read_video(source: Any) -> VideoFrames:
    """Open a video lazily: nothing is decoded until a frame is asked for.

    Args:
        source: a folder of frames, a video file (needs PyAV: `pip install "tcore[video]"`), a
            list/tuple of PIL images or uint8 (H, W, 3) arrays, a uint8 or float numpy array
            (T, H, W, 3), a uint8 or float torch tensor (T, 3, H, W), or a `VideoFrames` (returned
            as is). Float videos are in [0, 1], or in [0, 255] when their maximum is above 1.

    Returns:
        A `VideoFrames`: `len()`, `frames[i]` -> uint8 (H, W, 3) RGB, iteration (streaming),
        `.names`, `.size` (H, W), `.fps` (None when unknown).

    Raises:
        MissingFileError: `source` is a path that does not exist.
        InvalidInputError: an empty folder or list, a folder holding images of a format not read
            as frames, a single image file, a bad shape or value range, or a file that is not a
            video. `FrameReadError` (an InvalidInputError) when a frame cannot be read (unreadable,
            above PIL's decompression-bomb limit) or differs in size from frame 0 (raised when
            that frame is read).
        InvalidTypeError: an unsupported source type or dtype.
        MissingDependencyError: a video file without PyAV installed.
        (Each is a `tcore.errors.UserError` and the built-in error its name suggests.)
    """
    if isinstance(source, VideoFrames):
        return source
    if is_path(source):
        return _open_path(Path(source))
    if isinstance(source, (list, tuple)):
        return _ImageListFrames(source)
    if isinstance(source, np.ndarray) or is_tensor(source):
        return _ArrayFrames(source)
    raise InvalidTypeError(f"source: expected a frame folder, a video file, a list of PIL images, a numpy "
                           f"array (T, H, W, 3) or a torch tensor (T, 3, H, W), got {describe(source)}")


def _open_path(path: Path) -> VideoFrames:
    if not path.exists():
        raise MissingFileError(f"source: no such frame folder or video file: {str(path)!r}")
    if path.is_dir():
        return _FolderFrames(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise InvalidInputError(f"source: {str(path)!r} is a single image; a video is a folder of frames "
                                f"or a video file. Pass the folder that holds the frames: {str(path.parent)!r}")
    from ._pyav import VideoFileFrames

    return VideoFileFrames(path)
