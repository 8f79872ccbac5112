"""Lazy video reading: `read_video(source)` gives a `VideoFrames` sequence of RGB frames.

Every source decodes one frame at a time: indexing reads one frame, iteration streams, and memory
stays at a few frames whatever the video's length. Sources:

- a folder of frames (jpg, jpeg, png, bmp, webp, tif, tiff), in natural order of the file stems
  ("2.jpg" before "10.jpg"); other files and hidden files (".DS_Store", "._0001.jpg") are ignored;
- a video file (mp4, webm, avi, mov, mkv, ...), decoded with PyAV (the `video` extra);
- a list or tuple of PIL images or (H, W, 3) uint8 arrays;
- a numpy array (T, H, W, 3) or a torch tensor (T, 3, H, W): uint8 in [0, 255], or float in [0, 1].
  A float video whose maximum is above 1 is taken to be in [0, 255] already; NaN, negative values
  and values above 255 are errors.

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

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ._common import describe, is_path, is_tensor, natural_key
from .frames import FrameReadError, VideoFrames

__all__ = ["IMAGE_SUFFIXES", "FrameReadError", "VideoFrames", "image_to_rgb", "read_video"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError)  # what PIL raises for a broken file
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
        if not self._files:
            others = f"; it holds {len(files)} other files, e.g. {files[0].name!r}" if files else ""
            raise ValueError(
                f"source: the folder {str(folder)!r} holds no frames (image files ending in "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}){others}. Pass a folder of frames or a video file.")
        _check_unique_stems(self._files)
        self._size = _read_header_size(self._files[0])

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
        try:
            with Image.open(path) as image:
                frame = image_to_rgb(image, f"frame {index} ({path})")
        except FrameReadError:
            raise
        except _PIL_ERRORS as err:
            raise FrameReadError(f"frame {index} ({path}) could not be read: {err}") from err
        return self._check_size(frame, index, str(path))


def _check_unique_stems(files: list[Path]) -> None:
    """Two frames with one stem ("00001.jpg", "00001.png") would write the same output file."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise ValueError(
                f"source: the frame folder holds two images named {path.stem!r} "
                f"({seen[path.stem].name} and {path.name}); keep one of them")
        seen[path.stem] = path


def _read_header_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except _PIL_ERRORS as err:
        raise FrameReadError(f"frame 0 ({path}) could not be read: {err}") from err
    return height, width


class _ImageListFrames(VideoFrames):
    """A list of PIL images or (H, W, 3) uint8 arrays, converted to RGB arrays one at a time."""

    def __init__(self, images: Sequence[Any]) -> None:
        super().__init__(f"<list of {len(images)} images>")
        if len(images) == 0:
            raise ValueError("source: the list of frames is empty; a video needs at least one frame")
        for i, item in enumerate(images):
            if not isinstance(item, (Image.Image, np.ndarray)):
                raise TypeError(f"source[{i}]: a list of frames must hold PIL images or uint8 "
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
    hint = ""
    if len(shape) == 5 and shape[0] == 1:
        hint = " Drop the batch dimension: video[0]."
    elif len(shape) == 3:
        hint = " For a single frame add a time dimension: video[None]."
    elif len(shape) == 4 and tensor and shape[-1] == 3:
        hint = " It looks channels-last: pass video.permute(0, 3, 1, 2)."
    elif len(shape) == 4 and not tensor and shape[1] == 3:
        hint = " It looks channels-first: pass video.transpose(0, 2, 3, 1)."
    channels = shape[1] if tensor else shape[-1]
    if len(shape) != 4 or channels != 3 or shape[0] == 0:
        raise ValueError(f"source: expected a non-empty RGB video as a {expected}, got {describe(video)}.{hint}")
    if not (_is_float(video) or str(video.dtype) in ("uint8", "torch.uint8")):
        fix = "video.to(torch.uint8)" if tensor else "video.astype(np.uint8)"
        raise TypeError(f"source: a video {'tensor' if tensor else 'array'} must be uint8 in [0, 255] "
                        f"or float in [0, 1], got {describe(video)}; convert it, e.g. {fix}")


def _float_scale(video: Any) -> float:
    """255 for a float video in [0, 1], 1 for one in [0, 255] (its maximum is above 1)."""
    low, high = float(video.min()), float(video.max())
    if math.isnan(low) or math.isnan(high):
        raise ValueError(f"source: the float video ({describe(video)}) contains NaN")
    if low < 0 or high > 255:
        raise ValueError(f"source: a float video must be in [0, 1] (or [0, 255]), got values in "
                         f"[{low:g}, {high:g}]; undo any normalisation (x * std + mean) first")
    return 1.0 if high > 1 else 255.0


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
        FileNotFoundError: `source` is a path that does not exist.
        ValueError: an empty folder or list, a single image file, a bad shape or value range, or a
            file that is not a video. `FrameReadError` (a ValueError) when a frame cannot be read
            or differs in size from frame 0 (raised when that frame is read).
        TypeError: an unsupported source type or dtype.
        ImportError: a video file without PyAV installed.
    """
    if isinstance(source, VideoFrames):
        return source
    if is_path(source):
        return _open_path(Path(source))
    if isinstance(source, (list, tuple)):
        return _ImageListFrames(source)
    if isinstance(source, np.ndarray) or is_tensor(source):
        return _ArrayFrames(source)
    raise TypeError(f"source: expected a frame folder, a video file, a list of PIL images, a numpy "
                    f"array (T, H, W, 3) or a torch tensor (T, 3, H, W), got {describe(source)}")


def _open_path(path: Path) -> VideoFrames:
    if not path.exists():
        raise FileNotFoundError(f"source: no such frame folder or video file: {str(path)!r}")
    if path.is_dir():
        return _FolderFrames(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(f"source: {str(path)!r} is a single image; a video is a folder of frames "
                         f"or a video file. Pass the folder that holds the frames: {str(path.parent)!r}")
    from ._pyav import VideoFileFrames

    return VideoFileFrames(path)
