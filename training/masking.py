"""iBOT block masking as the reference does it (docs/training-recipe.md §4).

`block_mask` masks exactly `k` patches of an h x w grid with random rectangles (the reference's
loop never takes its "stuck" exit, so it always reaches the exact count). `batch_masks` masks a
fraction of a batch's global crops with stratified ratios and shuffles which crops get them.
All randomness comes from the numpy Generator passed in.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["block_mask", "batch_masks", "mask_upper_bound", "mask_indices"]

_ATTEMPTS = 10  # rectangle tries per call of the inner step


def _add_block(mask: np.ndarray, max_new: int, rng: np.random.Generator, min_patches: int,
               log_aspect: tuple[float, float]) -> int:
    """One inner step: up to 10 tries to mask a rectangle adding 1..max_new new patches.

    Returns:
        The number of newly masked patches (0 when every try failed).
    """
    h, w = mask.shape
    for _ in range(_ATTEMPTS):
        area = min_patches + (max_new - min_patches) * rng.random()  # random.uniform, also when max_new < min
        aspect = math.exp(rng.uniform(*log_aspect))
        bh = int(round(math.sqrt(area * aspect)))
        bw = int(round(math.sqrt(area / aspect)))
        if bw < w and bh < h:
            top = int(rng.integers(0, h - bh + 1))
            left = int(rng.integers(0, w - bw + 1))
            block = mask[top:top + bh, left:left + bw]
            new = bh * bw - int(block.sum())
            if 0 < new <= max_new:
                block[...] = True
                return new
    return 0


def block_mask(k: int, grid: tuple[int, int], rng: np.random.Generator, min_patches: int = 4,
               min_aspect: float = 0.3) -> np.ndarray:
    """Mask exactly `k` patches with random blocks.

    Args:
        k: patches to mask, 0 <= k <= h*w.
        grid: (h, w) patch grid.
        rng: the random source.
        min_patches: smallest block area drawn.
        min_aspect: aspect ratios are log-uniform in [min_aspect, 1/min_aspect].

    Returns:
        (h, w) bool mask with exactly k True.
    """
    h, w = grid
    if not 0 <= k <= h * w:
        raise ValueError(f"k={k}: must be in [0, {h * w}] for a {h}x{w} grid")
    mask = np.zeros((h, w), dtype=bool)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = 0
    while count < k:
        count += _add_block(mask, min(k - count, h * w), rng, min_patches, log_aspect)
    return mask


def mask_upper_bound(n_crops: int, n_patches: int, probability: float = 0.5,
                     ratio_min_max: tuple[float, float] = (0.1, 0.5)) -> int:
    """The reference's static bound on masked patches per batch (3771 for 128 crops of 196 patches)."""
    n = int(n_crops * probability)
    probs = np.linspace(ratio_min_max[0], ratio_min_max[1], n + 1)
    return sum(int(n_patches * probs[i + 1]) for i in range(n))


def batch_masks(n_crops: int, grid: tuple[int, int], rng: np.random.Generator, probability: float = 0.5,
                ratio_min_max: tuple[float, float] = (0.1, 0.5), min_patches: int = 4,
                min_aspect: float = 0.3) -> np.ndarray:
    """Masks for a batch of global crops (stratified ratios, shuffled over the crops).

    `n = int(n_crops * probability)` crops are masked; crop i of those draws its ratio uniformly in
    the i-th of n equal sub-intervals of `ratio_min_max` and masks `int(N * ratio)` patches; the
    remaining crops are unmasked; the order of all crops is then shuffled.

    Args:
        n_crops: B, the number of global crops in the batch (2 per sample).
        grid: (h, w) patch grid of a global crop; N = h*w.

    Returns:
        (B, N) bool.
    """
    h, w = grid
    n_patches = h * w
    n = int(n_crops * probability)
    probs = np.linspace(ratio_min_max[0], ratio_min_max[1], n + 1)
    masks = np.zeros((n_crops, n_patches), dtype=bool)
    for i in range(n):
        k = int(n_patches * rng.uniform(probs[i], probs[i + 1]))
        masks[i] = block_mask(k, grid, rng, min_patches, min_aspect).reshape(n_patches)
    return masks[rng.permutation(n_crops)]


def mask_indices(masks: np.ndarray) -> dict[str, np.ndarray]:
    """Index arrays of a batch's masks, computed once on the CPU (no device sync in the step).

    Args:
        masks: (B, N) bool.

    Returns:
        "aux_rows" (n,) int64: rows with at least one masked patch (the crops the PMM reconstructs);
        "mask_index" (M,) int64: flat positions row * N + patch of the masked patches, row-major;
        "aux_mask_index" (M,) int64: the same patches as positions i * N + patch in the stack of
        the n aux rows; "mask_weight" (M,) float32: 1 / (masked patches of its row).
    """
    b, n = masks.shape
    aux_rows = np.flatnonzero(masks.any(axis=1))
    mask_index = np.flatnonzero(masks)
    sub = masks[aux_rows]
    counts = masks.sum(axis=1)
    return {
        "aux_rows": aux_rows.astype(np.int64),
        "mask_index": mask_index.astype(np.int64),
        "aux_mask_index": np.flatnonzero(sub).astype(np.int64),
        "mask_weight": (1.0 / counts[mask_index // n]).astype(np.float32),
    }
