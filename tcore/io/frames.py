"""The lazy frame-sequence interface every video source implements (`VideoFrames`), and its error.

Kept apart from the sources (`video`, `_pyav`) so that they all import it and none imports another.
"""
from __future__ import annotations

import abc
import operator
from typing import Iterator

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError
from ._common import describe

__all__ = ["FrameReadError", "VideoFrames"]


class FrameReadError(InvalidInputError):
    """A frame of a video could not be read, or differs in size from frame 0."""


class VideoFrames(abc.ABC):
    """A lazy sequence of video frames, each a uint8 (H, W, 3) RGB numpy array.

    Supports `len()`, integer indexing (negative too), slicing (a lazy view) and iteration, which
    decodes one frame at a time. Use `read_video` to make one.

    Attributes:
        names: per-frame output names: the file stems for a frame folder ("00000", ...),
            zero-padded indices ("00000", "00001", ...) otherwise.
        size: (H, W) of every frame.
        fps: frames per second, or None when the source does not say.
    """

    def __init__(self, source: str) -> None:
        self.source = source

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @property
    @abc.abstractmethod
    def size(self) -> tuple[int, int]: ...

    @property
    def fps(self) -> float | None:
        return None

    @property
    def names(self) -> list[str]:
        return [f"{i:05d}" for i in range(len(self))]

    @abc.abstractmethod
    def _frame(self, index: int) -> np.ndarray:
        """Frame `index` (0 <= index < len) as uint8 (H, W, 3)."""

    def __getitem__(self, index: int | slice) -> np.ndarray | VideoFrames:
        if isinstance(index, slice):
            return _FrameRange(self, range(len(self))[index])
        try:
            i = operator.index(index)
        except TypeError:
            raise InvalidTypeError(f"frames[index]: index must be an int or a slice, got {describe(index)}") from None
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"frames[{i}]: index out of range for a video of {n} frames")
        return self._frame(i % n)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self._frame(i)

    #: True when frames decode independently of each other (image files), so that several
    #: threads may decode at once; False for streams (video files) and in-memory frames.
    decodes_independently: bool = False

    def iter_threaded(self, workers: int, ahead: int = 16) -> Iterator[np.ndarray]:
        """Iterate in order, `workers` threads decoding up to `ahead` frames ahead.

        Only sources whose `decodes_independently` is True use the threads (PIL releases the GIL
        while it decodes); the others iterate as `iter(frames)` does. Errors are raised in order,
        at the frame that failed.
        """
        if workers <= 1 or not self.decodes_independently or len(self) < 2:
            yield from self
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tcore-decode") as pool:
            pending: deque = deque()
            try:
                for i in range(len(self)):
                    pending.append(pool.submit(self._frame, i))
                    if len(pending) >= ahead:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()

    def close(self) -> None:
        """Release any open file (a no-op for sources that hold none)."""

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoFrames(source={self.source!r}, size={self.size}, fps={self.fps})"

    def _check_size(self, frame: np.ndarray, index: int, where: str) -> np.ndarray:
        """Return `frame` if it is (H, W, 3) with this video's (H, W); else a `FrameReadError`."""
        if frame.shape[:2] != self.size:
            raise FrameReadError(
                f"frame {index} ({where}) has size (H, W) = {frame.shape[:2]} but frame 0 has "
                f"{self.size}; all frames of a video must have the same size (resize them first)")
        return frame


class _FrameRange(VideoFrames):
    """A lazy view `frames[a:b:c]` of another `VideoFrames`."""

    def __init__(self, base: VideoFrames, indices: range) -> None:
        super().__init__(f"{base.source}[{indices.start}:{indices.stop}:{indices.step}]")
        self._base, self._indices = base, indices

    def __len__(self) -> int:
        return len(self._indices)

    @property
    def size(self) -> tuple[int, int]:
        return self._base.size

    @property
    def fps(self) -> float | None:
        base_fps = self._base.fps
        return None if base_fps is None else base_fps / abs(self._indices.step)

    @property
    def names(self) -> list[str]:
        base_names = self._base.names
        return [base_names[i] for i in self._indices]

    @property
    def decodes_independently(self) -> bool:  # type: ignore[override]
        return self._base.decodes_independently

    def _frame(self, index: int) -> np.ndarray:
        return self._base[self._indices[index]]
