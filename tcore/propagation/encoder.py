"""Frames -> L2-normalised patch features on the device, in batches, each frame once
(docs/propagation-protocol.md §3).

    >>> video = VideoEncoder.open("video.mp4", model="tcore_vits16", preset="davis")
    >>> video.size, video.grid                 # working size (H', W') and feature grid (h, w)
    >>> for feats in video.stream(): ...       # (k, h, w, D) chunks of frames 0, 1, ...
    >>> video.encoder(frames)                  # (k, h, w, D) of k uint8 (H, W, 3) frames

`VideoEncoder.open` is the one place where a video, a device, a backbone and a preset become an
encoder at the working size: the propagation front ends (`tcore.propagation.api`) and the feature
pictures (`tcore.pictures`) both start here, so their features are the same.

Preprocessing is the paper's: uint8 RGB -> float in [0, 1] -> bilinear resize (half-pixel centres,
no antialias; only when the size changes) -> ImageNet normalisation -> backbone -> final-normed
patch tokens -> L2 normalisation over channels (eps 1e-12), in exact fp32 (`tcore.precision.exact_fp32`)
unless `precision="bf16"`.
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import resolve_device
from ..errors import InvalidInputError
from ..precision import exact_fp32
from .presets import Preset, get_preset, working_size

__all__ = ["FrameEncoder", "VideoEncoder", "prefetch"]

# Threads decoding image files ahead of the backbone: one per four cores, at most four (measured on a
# 16-core GPU host in benchmarks/propagation.py, pipeline part; one thread is all a 2-core machine can spare).
_DECODE_WORKERS = max(1, min(4, (os.cpu_count() or 1) // 4))


class FrameEncoder:
    """Encode frames with a backbone at a fixed working size.

    Args:
        backbone: a tcore backbone (`patch_tokens`, `patch_size`, `mean`, `std`), already on `device`.
        size: (H', W') working size, multiples of the patch size.
        device: where frames are processed and features stay.
        batch_size: frames per backbone call.
        precision: "fp32" (exact: no autocast, no TF32, whatever the caller's context) or "bf16"
            (autocast; opt-in, faster on GPUs, changes the features slightly).
    """

    def __init__(self, backbone: torch.nn.Module, size: tuple[int, int], device: torch.device,
                 batch_size: int = 8, precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise InvalidInputError(f"precision={precision!r}: expected 'fp32' or 'bf16'")
        if batch_size < 1:
            raise InvalidInputError(f"batch_size={batch_size}: expected at least 1")
        self.backbone = backbone
        self.size = (int(size[0]), int(size[1]))
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self.grid = (self.size[0] // backbone.patch_size, self.size[1] // backbone.patch_size)
        self._mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1)

    def preprocess(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """(k) uint8 (H, W, 3) frames -> (k, 3, H', W') normalised float32 on the device."""
        batch = torch.from_numpy(np.stack(frames))  # (k, H, W, 3) uint8
        if self.device.type == "cuda":  # a pinned source makes the copy asynchronous
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True)
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)  # (k, 3, H, W)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=False)
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def __call__(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """(k) uint8 (H, W, 3) frames -> (k, h, w, D) L2-normalised float32 features.

        fp32 is exact whatever the caller's autocast or TF32 settings (`exact_fp32`); "bf16"
        opens its own autocast inside."""
        with exact_fp32(self.device):
            x = self.preprocess(frames)
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    tokens = self.backbone.patch_tokens(x)
            else:
                tokens = self.backbone.patch_tokens(x)
            return F.normalize(tokens.float(), dim=-1, eps=1e-12)

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        """Features of `frames` in chunks of `batch_size`, decoding ahead in a background thread."""
        for chunk in prefetch(_chunks(frames, self.batch_size), depth=2):
            yield self(chunk)


@dataclass(frozen=True)
class VideoEncoder:
    """A video opened with a backbone at its working size: frames in, features out.

    Build it with `VideoEncoder.open`.

    Attributes:
        frames: the video (`tcore.io.VideoFrames`: lazy, `len()`, indexing, `.size` (H, W)).
        encoder: the backbone at the working size, on the device.
        preset: the preset the working size came from (its propagation settings travel with it).
    """

    frames: Any  # tcore.io.VideoFrames
    encoder: FrameEncoder
    preset: Preset

    @classmethod
    def open(cls, video: Any, *, model: Any = None, preset: str | Preset | None = None,
             size: tuple[int, int] | None = None, device: str | torch.device | None = None, batch_size: int = 8,
             precision: str = "fp32", min_frames: int = 1) -> VideoEncoder:
        """Open `video` and load `model` on `device` at the working size of `preset` (or `size`).

        The cheap checks come first: the video is opened (not decoded), and the device and the
        preset are checked before the backbone is loaded.

        Args:
            video: anything `tcore.read_video` accepts (frame folder, video file, arrays, ...).
            model: as in `tcore.propagate_masks`: None (T-CoRe ViT-S/16, Kinetics-400), a name, a
                path or a module.
            preset: None (short side 480, aspect kept), a preset name or a `Preset`.
            size: (H, W) working size overriding the preset's size rule (floored to the patch size).
            device: None picks CUDA, then MPS, then CPU.
            batch_size: frames per backbone call.
            precision: "fp32" (exact) or "bf16" (opt-in autocast).
            min_frames: fewer frames than this is an error (propagation needs 2).

        Raises:
            InvalidInputError: a video with fewer than `min_frames` frames, a device that is not
                available, an unknown preset, a bad size, precision or batch size.
        """
        from ..io import read_video
        from ..models import load_backbone

        frames = read_video(video)
        if len(frames) < min_frames:
            raise InvalidInputError(f"video: propagation needs at least {min_frames} frames, got {len(frames)}")
        device = resolve_device(device)
        spec = get_preset(preset)
        backbone = load_backbone(model, device=device)
        work = working_size(tuple(frames.size), spec, backbone.patch_size, size)
        return cls(frames, FrameEncoder(backbone, work, device, batch_size, precision), spec)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(H', W') working size in pixels, multiples of the patch size."""
        return self.encoder.size

    @property
    def patch_size(self) -> int:
        """The backbone's patch size in pixels."""
        return int(self.encoder.backbone.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) cells of the feature grid."""
        return self.encoder.grid

    def stream(self, start: int = 0) -> Iterator[torch.Tensor]:
        """(k, h, w, D) features of frames start, start + 1, ... in chunks of the batch size.

        Frames are decoded ahead in background threads; frames before `start` are not decoded.
        """
        source = self.frames if start == 0 else self.frames[start:]
        return self.encoder.stream(source.iter_threaded(_DECODE_WORKERS))


def _chunks(items: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    chunk: list[np.ndarray] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_DONE = object()


def prefetch(iterator: Iterable, depth: int = 2) -> Iterator:
    """Run `iterator` in a background thread, at most `depth` items ahead; errors are re-raised here."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                items.put((item, None))
            items.put((_DONE, None))
        except BaseException as err:  # handed to the consumer, which re-raises it
            items.put((_DONE, err))

    thread = threading.Thread(target=work, name="tcore-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = items.get()
            if err is not None:
                raise err
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
