"""The micro-batch of a training step: one typed schema from the data loader to the model.

A `Batch` holds the b samples of one micro-batch, the rows of every crop tensor **crop-major**
(row i * b + j is crop i of sample j). Both augmentation paths end in the same `Batch`:

* `augment.device=cpu`: the loader's workers render the crops with PIL, so the loader yields a
  `Batch` of uint8 crops; `Batch.to(device)` then `Batch.normalized()` make the model inputs.
* `augment.device=gpu`: the workers only read JPEG bytes and draw the crop plans, so the loader
  yields an `EncodedBatch`; `training.augment_gpu.render_batch` decodes and crops it on the
  device and returns the same normalised `Batch`.

`training.data.to_device_batch` does either. The student takes the `Batch` whole
(`Student.forward(batch)`), the teacher its `globals` and `mask_index`, the losses its
`mask_weight`. Shapes: b samples, G / l the global / local crop side, L local crops per sample,
N = (G / patch)^2 patches per global crop, n global rows with a masked patch, M masked patches.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

from training.augment import normalize

__all__ = ["Batch", "EncodedBatch"]

_P = TypeVar("_P", bound="_Pinnable")


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`obj` (a tensor, or a list / dict of them) with `fn` applied to every tensor."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _replace_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    return dataclasses.replace(batch, **{f.name: _map_tensors(getattr(batch, f.name), fn)
                                         for f in dataclasses.fields(batch)})


class _Pinnable:
    """`pin_memory()` for a dataclass of tensors (and lists / dicts of them), as the DataLoader calls it."""

    def pin_memory(self: _P) -> _P:
        """Every tensor in page-locked memory (the DataLoader calls this with `pin_memory=True`)."""
        return _replace_tensors(self, torch.Tensor.pin_memory)


@dataclass(frozen=True)
class Batch(_Pinnable):
    """One micro-batch of b samples, crop-major (row i * b + j = crop i of sample j).

    Attributes:
        globals: (2b, 3, G, G) the current frame's two global crops: uint8 in [0, 255] as the
            loader renders them, ImageNet-normalised float as the model takes them.
        locals: (L*b, 3, l, l) the current frame's local crops, same dtype as `globals`.
        past: (n, 3, G, G) the past frame's auxiliary view paired with each row of `aux_rows`
            (slot `r // b` of sample `r % b`), same dtype as `globals`.
        future: (n, 3, G, G) the same for the future frame.
        masks: (2b, N) bool iBOT masks of the global crops.
        aux_rows: (n,) int64 the global rows with at least one masked patch.
        mask_index: (M,) int64 the masked patches as flat positions row * N + patch, row-major.
        aux_mask_index: (M,) int64 the same patches as positions i * N + patch in the stack of
            the n `aux_rows`.
        mask_weight: (M,) float32 1 / (masked patches of the patch's crop).
    """

    globals: torch.Tensor
    locals: torch.Tensor
    past: torch.Tensor
    future: torch.Tensor
    masks: torch.Tensor
    aux_rows: torch.Tensor
    mask_index: torch.Tensor
    aux_mask_index: torch.Tensor
    mask_weight: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """Every tensor on `device` (asynchronous copies from pinned memory by default)."""
        return _replace_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def normalized(self, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> Batch:
        """uint8 crops -> ImageNet-normalised `dtype` crops (ToTensor + Normalize), on their device."""
        return dataclasses.replace(self, **{name: normalize(getattr(self, name), dtype, channels_last)
                                            for name in ("globals", "locals", "past", "future")})


@dataclass(frozen=True)
class EncodedBatch(_Pinnable):
    """A micro-batch before its crops exist: JPEG bytes and crop plans (GPU augmentation), for
    `training.augment_gpu.render_batch`.

    The mask fields are `Batch`'s. m frames are decoded for the auxiliary views (one per sample
    and side that has a masked row; the current frame's bytes again when an auxiliary frame is the
    current one). A photo dict has `training.augment.Photo`'s fields as tensors, one row per crop.

    Attributes:
        current_bytes: b uint8 tensors, the current frames' JPEG files.
        current_boxes: (b, 2+L, 4) int64 (top, left, height, width) of the 2 global and L local
            crops of each sample, in frame pixels.
        current_flips: (b, 2+L) bool horizontal flips.
        current_photo: photometric parameters of the b * (2+L) current crops, sample-major.
        aux_bytes: m uint8 tensors, the auxiliary frames' JPEG files.
        aux_boxes: (m, 4) int64 the centre box of each auxiliary frame.
        past_frame, future_frame: (n,) int64 the auxiliary frame of each row of `aux_rows`.
        past_photo, future_photo: photometric parameters of the n past / future views.
    """

    masks: torch.Tensor
    aux_rows: torch.Tensor
    mask_index: torch.Tensor
    aux_mask_index: torch.Tensor
    mask_weight: torch.Tensor
    current_bytes: list[torch.Tensor]
    current_boxes: torch.Tensor
    current_flips: torch.Tensor
    current_photo: dict[str, torch.Tensor]
    aux_bytes: list[torch.Tensor]
    aux_boxes: torch.Tensor
    past_frame: torch.Tensor
    future_frame: torch.Tensor
    past_photo: dict[str, torch.Tensor]
    future_photo: dict[str, torch.Tensor]
