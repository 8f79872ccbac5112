"""Frames -> L2-normalised patch features on the device, in batches, each frame once
(docs/propagation-protocol.md §3).

Preprocessing is the paper's: uint8 RGB -> float in [0, 1] -> bilinear resize (half-pixel centres,
no antialias; only when the size changes) -> ImageNet normalisation -> backbone -> final-normed
patch tokens -> L2 normalisation over channels (eps 1e-12), in exact fp32 (`tcore.precision.exact_fp32`)
unless `precision="bf16"`.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import resolve_device
from ..precision import exact_fp32

__all__ = ["FrameEncoder", "pick_device", "prefetch"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` checked to exist here (`tcore.devices.resolve_device`), else CUDA, then Apple MPS, then CPU.

    Raises:
        ValueError: not a device name, or a device this machine lacks (the message lists those it has).
    """
    return resolve_device(device)


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
            raise ValueError(f"precision={precision!r}: expected 'fp32' or 'bf16'")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected at least 1")
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
