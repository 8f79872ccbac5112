"""Video files through PyAV (the optional `video` extra): a streaming decoder and an encoder.

`av` is imported inside the functions here, never at module level, so `import tcore` and every
other source work without it; its absence raises a `MissingDependencyError` (an ImportError) that names the extra.
"""
from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError
from .frames import FrameReadError, VideoFrames

__all__ = ["VideoFileFrames", "import_av", "write_video"]

_ENCODERS = ("libx264", "h264", "mpeg4")  # first available wins


def import_av() -> ModuleType:
    """The `av` module, or a `MissingDependencyError` that says how to install it."""
    try:
        import av
    except ImportError as err:
        raise MissingDependencyError(
            'Video files need PyAV, installed by tcore\'s "video" extra: pip install "tcore[video]" '
            "(or pip install av). Without it, pass a folder of frames instead.") from err
    return av


class VideoFileFrames(VideoFrames):
    """Frames of a video file, decoded as a stream.

    Iteration opens its own decoder and streams to the end. Indexing keeps one decoder and its
    position: reading forward decodes only the frames in between; reading backwards re-opens the
    file and decodes from the start (sequential access is the fast path). `len()` comes from the
    container's header, or from one demuxing pass (no decoding) when the header does not say; a
    header that promises more frames than the file holds raises a `FrameReadError` at the first
    missing frame.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self._path = path
        container, stream = self._open()
        with container:
            rate = stream.average_rate or stream.guessed_rate
            self._fps = float(rate) if rate else None
            self._len: int | None = stream.frames or None
            first = next(_decode(container, stream), None)  # its size is after rotation
        if first is None:
            raise InvalidInputError(f"source: the video {str(path)!r} holds no frames")
        self._size = first.shape[:2]
        self._reader: tuple[Any, Iterator[np.ndarray]] | None = None  # indexing: (container, frames)
        self._next_index = 0  # index of the frame the reader yields next
        self._last: tuple[int, np.ndarray] | None = None  # last frame read by index

    def __len__(self) -> int:
        if self._len is None:
            container, stream = self._open()
            with container:  # count packets: one demuxing pass, no decoding
                self._len = sum(1 for packet in container.demux(stream) if packet.size)
        return self._len

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def fps(self) -> float | None:
        return self._fps

    def __iter__(self) -> Iterator[np.ndarray]:
        container, stream = self._open()
        with container:
            frames = _decode(container, stream)
            index = 0
            while self._len is None or index < self._len:
                frame = self._next(frames, index, at_end_ok=self._len is None)
                if frame is None:  # the length was unknown: now it is
                    self._len = index
                    return
                yield frame
                index += 1

    def _frame(self, index: int) -> np.ndarray:
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        if self._reader is None or index < self._next_index:
            self.close()
            container, stream = self._open()
            self._reader, self._next_index = (container, _decode(container, stream)), 0
        while self._next_index <= index:
            try:
                frame = self._next(self._reader[1], self._next_index, at_end_ok=False)
            except FrameReadError:
                self.close()  # the decoder stopped: the next call starts afresh
                raise
            self._next_index += 1
        self._last = (index, frame)
        return frame

    def close(self) -> None:
        """Close the file held open by indexing (iteration closes its own)."""
        if self._reader is not None:
            self._reader[0].close()
            self._reader, self._last = None, None

    def __getstate__(self) -> dict[str, Any]:  # picklable (DataLoader workers): no open file
        return {**self.__dict__, "_reader": None, "_next_index": 0, "_last": None}

    def _open(self) -> tuple[Any, Any]:
        av = import_av()
        try:
            container = av.open(str(self._path))
        except av.FFmpegError as err:
            raise InvalidInputError(f"source: {str(self._path)!r} could not be opened as a video: {err}") from err
        if not container.streams.video:
            container.close()
            raise InvalidInputError(f"source: {str(self._path)!r} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return container, stream

    def _next(self, frames: Iterator[np.ndarray], index: int, at_end_ok: bool) -> np.ndarray | None:
        """Decode frame `index` from `frames`; None at the end of the file when `at_end_ok`."""
        av = import_av()
        try:
            frame = next(frames)
        except StopIteration:
            if at_end_ok:
                return None
            raise FrameReadError(
                f"frame {index} ({self._path}) could not be read: the file ends after {index} "
                f"frames but its header declares {self._len}; it may be truncated (re-encode it, "
                f"e.g. `ffmpeg -i in.mp4 out.mp4`, or extract its frames to a folder)") from None
        except av.FFmpegError as err:
            raise FrameReadError(f"frame {index} ({self._path}) could not be decoded: {err}") from err
        return self._check_size(frame, index, str(self._path))


def _decode(container: Any, stream: Any) -> Iterator[np.ndarray]:
    """The decoded frames of `stream`, as uint8 (H, W, 3) RGB arrays, upright.

    Phone videos store their orientation as a display rotation (counter-clockwise degrees); the
    frames are rotated by it, as players and ffmpeg do. Mirroring flags are not applied.
    """
    for frame in container.decode(stream):
        rgb = frame.to_ndarray(format="rgb24")
        quarter_turns = round(frame.rotation / 90) % 4
        yield np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Encode uint8 (H, W, 3) RGB frames to a video file, one at a time.

    The codec is H.264 (crf 18) when this PyAV build has an encoder for it, else MPEG-4 part 2;
    pixel format yuv420p, which needs even sizes: an odd last row or column is cropped.

    Returns:
        The number of frames written.

    Raises:
        InvalidInputError: no frames, or frames of different sizes.
        MissingDependencyError: this PyAV build has no video encoder tcore can use.
    """
    av = import_av()
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise InvalidInputError(f"frames: nothing to write to {str(path)!r} (no frames given)")
    height, width = first.shape[0] // 2 * 2, first.shape[1] // 2 * 2
    codec = _pick_encoder(av)
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt, stream.height, stream.width = "yuv420p", height, width
        if codec == "mpeg4":
            stream.bit_rate = int(max(2e6, height * width * fps * 0.3))
        else:
            stream.options = {"crf": "18"}
        for frame in itertools.chain([first], frames):
            if frame.shape != first.shape:
                raise InvalidInputError(f"frames: frame {count} has shape {frame.shape} but frame 0 has {first.shape}")
            even = np.ascontiguousarray(frame[:height, :width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(even, format="rgb24")))
            count += 1
        container.mux(stream.encode(None))  # flush the encoder
    return count


def _pick_encoder(av: ModuleType) -> str:
    for name in _ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except (ValueError, av.FFmpegError):
            continue
        return name
    raise MissingDependencyError(f"this PyAV build has none of the video encoders {_ENCODERS}; write a .gif instead, "
                                 "or install a PyAV build with libx264 (pip install av)")
