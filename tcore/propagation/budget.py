"""What a working size costs, checked after the model is loaded and before any frame is decoded.

Two sizes cannot run, whoever chose them:

- a feature grid with fewer cells than the top-k the propagation matches per query (`--size 16 16`
  gives one cell, and top-7 needs seven): refused with the smallest size that has enough cells;
- a size whose backbone activations and propagation context need more memory than the device has
  in all (`--size 100000 100000`: 39 million patch tokens per frame, terabytes): refused with an
  estimate of what it needs, what the device has, and a size that fits.

The estimate is a lower bound on the largest terms, in fp32 (bytes):

- backbone, per batch: the resized frames `B * 3 * H * W * 4 * 2` (the frames and their normalised
  copy) and, per patch token, the residual stream and its normed copy plus the widest linear
  layer's output (the MLP's hidden layer, 4D for T-CoRe): `B * N * (2 * D + widest) * 4`;
- propagation: the features of the frames it keeps (first frame, context, the batch being
  propagated): `(n_context + 1 + B) * N * D * 4`.

Only a size above the device's total memory is refused (physical RAM for the CPU, the GPU's
memory for CUDA, the recommended maximum for Apple MPS), so an explicit size that can fit is always
obeyed; memory other programs hold is not counted.
"""
from __future__ import annotations

import math
import os

import torch

from ..errors import InsufficientMemoryError, InvalidInputError
from .presets import MAX_AUTO_TOKENS, scaled_size

__all__ = ["check_working_size", "device_memory", "estimate_memory"]

_FP32 = 4


def estimate_memory(work: tuple[int, int], backbone: torch.nn.Module, batch_size: int,
                    n_context: int) -> tuple[int, int]:
    """(backbone bytes per batch, propagation bytes): lower bounds on the largest terms (module docstring).

    Args:
        work: (H, W) working size in pixels, multiples of the patch size.
        backbone: a tcore backbone (`patch_size`, `embed_dim`).
        batch_size: frames per backbone call, B.
        n_context: frames of short-term context the propagation keeps (0: no propagation).
    """
    patch, dim = int(backbone.patch_size), int(backbone.embed_dim)
    tokens = (work[0] // patch) * (work[1] // patch)
    widest = max((m.out_features for m in backbone.modules() if isinstance(m, torch.nn.Linear)), default=dim)
    pixels = batch_size * 3 * work[0] * work[1] * _FP32 * 2
    activations = batch_size * tokens * (2 * dim + widest) * _FP32
    context = (n_context + 1 + batch_size) * tokens * dim * _FP32 if n_context else 0
    return pixels + activations, context


def device_memory(device: torch.device) -> int | None:
    """Total memory of `device` in bytes (physical RAM for the CPU), or None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "mps":
        recommended = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
        return int(recommended()) if recommended is not None else None
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # not a POSIX system
            return None
    return None


def check_working_size(work: tuple[int, int], backbone: torch.nn.Module, *, topk: int, n_context: int,
                       batch_size: int, device: torch.device) -> None:
    """Refuse a working size the propagation cannot use, or whose memory the device cannot hold.

    Args:
        work: (H, W) working size in pixels, multiples of the patch size.
        backbone: the loaded backbone.
        topk: keys matched per query; the grid needs at least that many cells (0: no propagation).
        n_context: frames of short-term context kept by the propagation (0: no propagation).
        batch_size: frames per backbone call.
        device: where the backbone and the propagation run.

    Raises:
        InvalidInputError: the feature grid has fewer cells than `topk`.
        InsufficientMemoryError: the estimate exceeds the device's total memory.
    """
    patch = int(backbone.patch_size)
    grid = (work[0] // patch, work[1] // patch)
    if grid[0] * grid[1] < topk:
        scale = math.sqrt(topk / (grid[0] * grid[1]))
        fit = (math.ceil(grid[0] * scale) * patch, math.ceil(grid[1] * scale) * patch)
        raise InvalidInputError(
            f"size: the working size {work[0]}x{work[1]} gives a {grid[0]}x{grid[1]} feature grid ({grid[0] * grid[1]} "
            f"cell{'s' * (grid[0] * grid[1] != 1)} of {patch}x{patch} pixels), fewer than the {topk} keys the "
            f"propagation matches per query (top-{topk}); pass a larger size, at least size={fit} (command line: "
            f"--size {fit[0]} {fit[1]})")
    total = device_memory(device)
    if total is None:
        return
    network, context = estimate_memory(work, backbone, batch_size, n_context)
    if network + context <= total:
        return
    per_token = (network + context) / (grid[0] * grid[1])
    fit = scaled_size(work, 1.0, patch, max_tokens=max(1, min(MAX_AUTO_TOKENS, int(total / 2 / per_token))))
    raise InsufficientMemoryError(
        f"size: the working size {work[0]}x{work[1]} has {grid[0]}x{grid[1]} = {grid[0] * grid[1]} patch tokens per "
        f"frame and needs at least {_gb(network + context)} (the backbone {_gb(network)} for a batch of {batch_size} "
        f"frames, the propagation {_gb(context)} for its context), more than the {_gb(total)} this {device.type} "
        f"device has; pass a smaller size, e.g. size={fit} (command line: --size {fit[0]} {fit[1]}), which keeps "
        f"the aspect ratio and needs about half of it")


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:,.1f} GB"
