"""DAVIS-2017 semi-supervised metrics: region similarity J, boundary F-measure F, their mean,
recall and decay, bit-identical to the official davis2017-evaluation code (docs/propagation-protocol.md §9.1).

The boundary dilation is an exact binary dilation by the official disk, computed from shifted ORs
on a crop around each object; every count is an integer, so every score equals the official one.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .._arrays import as_numpy
from ._common import _check_int, _check_ndim, _check_same_shape

__all__ = ["DAVIS_BOUNDARY_FRACTION", "DAVIS_GLOBAL_COLUMNS", "DAVIS_VOID_ID", "davis_boundary_radius", "davis_scores",
           "davis_summary", "format_davis_csv"]


# DAVIS: boundary tolerance as a fraction of the image diagonal (official `bound_th`).
DAVIS_BOUNDARY_FRACTION = 0.008
DAVIS_VOID_ID = 255
DAVIS_GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
_NUMPY_CHUNK_FRAMES = 8  # frames per crop on the CPU (one crop spans the object in all of them)
_TORCH_CHUNK_ELEMENTS = 1 << 24  # per (frames x objects x H x W) bool tensor on the device


def davis_boundary_radius(height: int, width: int) -> int:
    """Boundary tolerance of the official F-measure, in pixels.

    Args:
        height: image height H in pixels.
        width: image width W in pixels.

    Returns:
        ``ceil(0.008 * sqrt(H^2 + W^2))``: 8 at 480x854, 9 at 480x880.
    """
    return math.ceil(DAVIS_BOUNDARY_FRACTION * math.sqrt(height * height + width * width))


def _zeros(like: Any, shape: tuple[int, ...]) -> Any:
    return np.zeros(shape, like.dtype) if isinstance(like, np.ndarray) else like.new_zeros(shape)


def _copy(x: Any) -> Any:
    return x.copy() if isinstance(x, np.ndarray) else x.clone()


def _boundary(mask: Any) -> Any:
    """Official `_seg2bmap` on the last two axes: a pixel is on the boundary when it differs from
    its east, south or south-east neighbour, counting only neighbours inside the image (this is
    exactly the official last-row / last-column rules and the zero bottom-right pixel).

    Args:
        mask: (..., H, W) bool numpy array or torch tensor.

    Returns:
        (..., H, W) bool, same type.
    """
    b = _zeros(mask, tuple(mask.shape))
    b[..., :, :-1] = mask[..., :, :-1] ^ mask[..., :, 1:]
    b[..., :-1, :] |= mask[..., :-1, :] ^ mask[..., 1:, :]
    b[..., :-1, :-1] |= mask[..., :-1, :-1] ^ mask[..., 1:, 1:]
    return b


def _disk_half_widths(radius: int) -> list[int]:
    """Half-width of each row dy = -r..r of skimage's disk(r) (all offsets with dx^2+dy^2 <= r^2)."""
    return [math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1)]


def _dilate(b: Any, radius: int) -> Any:
    """Binary dilation by disk(radius) on the last two axes; outside the image is background
    (as cv2.dilate's default border). Exact: the disk is a stack of horizontal runs, each run is an
    OR over a window built from power-of-two windows, and the rows are ORed with vertical shifts.

    Args:
        b: (..., H, W) bool numpy array or torch tensor.
        radius: disk radius r >= 0 in pixels.

    Returns:
        (..., H, W) bool, same type.
    """
    height, width = b.shape[-2:]
    padded = _zeros(b, tuple(b.shape[:-1]) + (width + 2 * radius,))  # (..., H, W + 2r)
    padded[..., radius:radius + width] = b
    runs = {1: padded}  # runs[n][..., x] = OR of padded[..., x : x + n]
    n = 1
    while 2 * n <= 2 * radius + 1:
        runs[2 * n] = runs[n][..., :-n] | runs[n][..., n:]
        n *= 2
    half_widths = _disk_half_widths(radius)
    windows = {0: b}  # windows[w][..., x] = OR of b[..., x - w : x + w + 1] (clipped to the image)
    for w in sorted(set(half_widths) - {0}):
        n = 1 << ((2 * w + 1).bit_length() - 1)  # largest power of two <= 2w + 1
        left, right = radius - w, radius + w + 1 - n
        windows[w] = runs[n][..., left:left + width] | runs[n][..., right:right + width]
    out = _copy(windows[radius])
    for dy in range(1, min(radius, height - 1) + 1):
        w = windows[half_widths[radius + dy]]
        out[..., dy:, :] |= w[..., :-dy, :]
        out[..., :-dy, :] |= w[..., dy:, :]
    return out


# --------------------------------------------------------------------------------------------------
# DAVIS: per-frame integer counts

# rows of the counts array
_INTER, _UNION, _PRED_B, _GT_B, _PRED_MATCH, _GT_MATCH = range(6)


def _object_counts(gk: np.ndarray, pk: np.ndarray, radius: int) -> np.ndarray:
    """The six integer counts of one object in a few frames, computed on a crop around it.

    Args:
        gk, pk: (N, H, W) bool ground-truth and predicted masks of one object.
        radius: boundary tolerance in pixels (of the full image).

    Returns:
        (6, N) int64: |G and P|, |G or P|, |B_P|, |B_G|, |B_P and dil(B_G)|, |B_G and dil(B_P)|
        per frame, with B the boundary maps and dil the dilation by the disk.
    """
    either = (gk | pk).any(axis=0)  # (H, W)
    rows = np.flatnonzero(either.any(axis=1))
    if rows.size == 0:
        return np.zeros((6, len(gk)), np.int64)
    cols = np.flatnonzero(either[rows[0]:rows[-1] + 1].any(axis=0))
    # One pixel of margin on each side makes the in-crop boundary rule equal the full-image rule:
    # pixels above/left of the object can be boundary; pixels below/right are background neighbours.
    y, x = slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2)
    g, p = gk[:, y, x], pk[:, y, x]  # (N, h, w)
    bg, bp = _boundary(g), _boundary(p)
    maps = (g & p, g | p, bp, bg, bp & _dilate(bg, radius), bg & _dilate(bp, radius))
    return np.array([[np.count_nonzero(frame) for frame in m] for m in maps], np.int64)


def _counts_numpy(gt: np.ndarray, pred: np.ndarray, n_obj: int, radius: int) -> np.ndarray:
    """Counts for frames 1..T-2 on the CPU, a few frames at a time: (6, n_obj, T-2) int64."""
    counts = np.zeros((6, n_obj, gt.shape[0] - 2), np.int64)
    for start in range(1, gt.shape[0] - 1, _NUMPY_CHUNK_FRAMES):
        stop = min(start + _NUMPY_CHUNK_FRAMES, gt.shape[0] - 1)
        for k in range(n_obj):
            counts[:, k, start - 1:stop - 1] = _object_counts(gt[start:stop] == k + 1,
                                                              pred[start:stop] == k + 1, radius)
    return counts


def _counts_torch(gt: np.ndarray, pred: np.ndarray, n_obj: int, radius: int,
                  device: Any) -> np.ndarray:
    """Counts for frames 1..T-2 with torch on `device`, whole frames in batches: (6, n_obj, T-2)."""
    import torch

    if gt.dtype != np.uint8:  # torch has few ops for the other unsigned types
        gt, pred = gt.astype(np.int64), pred.astype(np.int64)
    height, width = gt.shape[1:]
    step = max(1, _TORCH_CHUNK_ELEMENTS // max(1, n_obj * height * width))
    ids = torch.arange(1, n_obj + 1, device=device).view(1, n_obj, 1, 1)
    parts = []
    for start in range(1, gt.shape[0] - 1, step):
        stop = min(start + step, gt.shape[0] - 1)
        g = torch.from_numpy(gt[start:stop]).to(device).unsqueeze(1) == ids  # (N, n_obj, H, W)
        p = torch.from_numpy(pred[start:stop]).to(device).unsqueeze(1) == ids
        bg, bp = _boundary(g), _boundary(p)
        sums = [(g & p), (g | p), bp, bg, bp & _dilate(bg, radius), bg & _dilate(bp, radius)]
        parts.append(torch.stack([s.sum(dim=(-2, -1)) for s in sums]))  # (6, N, n_obj)
    return torch.cat(parts, dim=1).transpose(1, 2).cpu().numpy().astype(np.int64)


# --------------------------------------------------------------------------------------------------
# DAVIS: scores and statistics


def _as_uint8(ids: np.ndarray) -> np.ndarray:
    """uint8 ids for fast comparisons; ids above 255 become 255, which is no object id here."""
    return ids if ids.dtype == np.uint8 else np.minimum(ids, 255).astype(np.uint8)


def _j_and_f(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F (float64, as the official formulas) from (6, n_obj, n) counts."""
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.where(counts[_UNION] > 0, counts[_INTER] / counts[_UNION], 1.0)
        # An empty boundary gives precision (or recall) 1 and zero matches on the other side, which
        # reproduces the official special cases: one side empty -> F = 0, both empty -> F = 1.
        precision = np.where(counts[_PRED_B] > 0, counts[_PRED_MATCH] / counts[_PRED_B], 1.0)
        recall = np.where(counts[_GT_B] > 0, counts[_GT_MATCH] / counts[_GT_B], 1.0)
        total = precision + recall
        f = np.where(total > 0, 2 * precision * recall / total, 0.0)
    return j, f


def _statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Official mean, recall and decay of one object's per-frame values (1-D float64)."""
    mean = np.nanmean(values)
    recall = np.nanmean(values > 0.5)
    # Four bins over the frames: edges round(linspace(1, n, 5)) - 1 (halves rounded up), inclusive.
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    decay = np.nanmean(values[edges[0]:edges[1] + 1]) - np.nanmean(values[edges[3]:edges[4] + 1])
    return float(mean), float(recall), float(decay)


def davis_scores(gt: Any, pred: Any, *, device: Any = None) -> dict[str, Any]:
    """J and F of one sequence, as the official semi-supervised DAVIS-2017 evaluation.

    The objects are ids 1..K with K the largest id in ground-truth frame 0; ground-truth id 255
    (void) counts as background, as do ground-truth ids above K. Only frames 1..T-2 are scored. A
    predicted id above K in a scored frame is an error (the official code exits); objects missing
    from the prediction are empty masks. Per frame, J is the IoU (1 when the union is empty) and F
    the boundary F-measure: boundaries by the official `_seg2bmap` rules, matched within a disk of
    radius `davis_boundary_radius(H, W)` (8 at 480x854) that does not reach outside the image.
    Per object, the official statistics: mean (M), recall (fraction of frames above 0.5) and decay
    (mean of the first quarter of the frames minus mean of the last quarter).

    Note: the official code stores the decay's bin edges as uint8, which wraps for sequences with
    more than 256 scored frames; here the edges are exact, so only such sequences' decay differs.

    Args:
        gt: (T, H, W) integer ids, numpy array or torch tensor, T >= 3; 0 background, 255 void.
        pred: (T, H, W) integer ids of the same shape (frames 0 and T-1 are ignored).
        device: None (default) computes on the CPU with numpy, cropping around each object;
            a torch device ("cuda", "cpu", ...) computes whole frames in batches with torch there.
            Both give identical integer counts, hence identical scores.

    Returns:
        dict with, for K objects in object-id order (lists of K floats unless stated):
            "J", "F": per-object means of J and F over the scored frames (official "M").
            "JF": (J + F) / 2 per object.
            "J_recall", "F_recall": fraction of scored frames with a value > 0.5 (official "R").
            "J_decay", "F_decay": first-quarter mean minus last-quarter mean (official "D").
            "J_per_frame", "F_per_frame": (K, T-2) float64 arrays; column i is frame i + 1.
            "n_objects": K.

    Raises:
        ValueError: wrong shapes or dtypes, fewer than 3 frames, or predicted ids above K.
    """
    gt, pred = as_numpy(gt), as_numpy(pred)
    for x, name in ((gt, "gt"), (pred, "pred")):
        _check_ndim(x, name, 3, "(T, H, W): the frames of one sequence stacked")
        _check_int(x, name)
    _check_same_shape(gt, pred)
    if gt.shape[0] < 3 or 0 in gt.shape:
        raise ValueError(f"gt and pred need at least 3 non-empty frames (frames 1..T-2 are scored), "
                         f"got shape {tuple(gt.shape)}")
    first = gt[0]
    n_obj = int(first[first != DAVIS_VOID_ID].max(initial=0))
    pred_max = int(pred[1:-1].max())
    if pred_max > n_obj:
        raise ValueError(f"pred has object id {pred_max} in frames 1..T-2 but gt frame 0 has "
                         f"{n_obj} objects (ids 1..{n_obj}); the official evaluation stops here. "
                         f"Remove or relabel the extra objects")
    if n_obj < DAVIS_VOID_ID:  # void (and any id above K) never equals an object id
        gt, pred = _as_uint8(gt), _as_uint8(pred)
    else:
        gt = np.where(gt == DAVIS_VOID_ID, 0, gt)
    radius = davis_boundary_radius(*gt.shape[1:])
    if device is None:
        counts = _counts_numpy(gt, pred, n_obj, radius)
    else:
        counts = _counts_torch(gt, pred, n_obj, radius, device)
    j, f = _j_and_f(counts)
    j_stats = [_statistics(row) for row in j]
    f_stats = [_statistics(row) for row in f]
    return {
        "J": [s[0] for s in j_stats],
        "F": [s[0] for s in f_stats],
        "JF": [(a[0] + b[0]) / 2 for a, b in zip(j_stats, f_stats)],
        "J_recall": [s[1] for s in j_stats],
        "J_decay": [s[2] for s in j_stats],
        "F_recall": [s[1] for s in f_stats],
        "F_decay": [s[2] for s in f_stats],
        "J_per_frame": j,
        "F_per_frame": f,
        "n_objects": n_obj,
    }


def davis_summary(
    scores: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """Global DAVIS results over many sequences, as the official CSV files.

    Every mean is over all objects of all sequences (object-weighted, not sequence-weighted);
    ``J&F-Mean = (J-Mean + F-Mean) / 2``.

    Args:
        scores: {sequence name: davis_scores(...)} in the order the rows should have (the official
            order is `ImageSets/2017/val.txt`), or an iterable of davis_scores results (then the
            sequences are named "0", "1", ...).

    Returns:
        dict with the official global columns "J&F-Mean", "J-Mean", "J-Recall", "J-Decay",
        "F-Mean", "F-Recall", "F-Decay" (floats, fractions, unrounded), and "per_object": the rows
        of the official per-sequence CSV, [{"Sequence": "<name>_<object id>", "J-Mean": float,
        "F-Mean": float}, ...].

    Raises:
        ValueError: when there is no object at all.
    """
    if isinstance(scores, Mapping):
        items = list(scores.items())
    else:
        items = [(str(i), s) for i, s in enumerate(scores)]
    keys = ("J", "J_recall", "J_decay", "F", "F_recall", "F_decay")
    columns: dict[str, list[float]] = {k: [] for k in keys}
    rows = []
    for name, seq in items:
        for key, values in columns.items():
            values.extend(seq[key])
        rows += [{"Sequence": f"{name}_{k + 1}", "J-Mean": j, "F-Mean": f}
                 for k, (j, f) in enumerate(zip(seq["J"], seq["F"]))]
    if not rows:
        raise ValueError("davis_summary got no object: pass {name: davis_scores(gt, pred)} for at "
                         "least one sequence whose first ground-truth frame has an object")
    means = {key: float(np.mean(values)) for key, values in columns.items()}
    return {
        "J&F-Mean": (means["J"] + means["F"]) / 2.0,
        "J-Mean": means["J"], "J-Recall": means["J_recall"], "J-Decay": means["J_decay"],
        "F-Mean": means["F"], "F-Recall": means["F_recall"], "F-Decay": means["F_decay"],
        "per_object": rows,
    }


def format_davis_csv(summary: Mapping[str, Any]) -> tuple[str, str]:
    """The two official CSV files' text (values with three decimals, as the official writer).

    Args:
        summary: the result of `davis_summary`.

    Returns:
        (text of ``global_results-val.csv``, text of ``per-sequence_results-val.csv``).
    """
    global_csv = ",".join(DAVIS_GLOBAL_COLUMNS) + "\n"
    global_csv += ",".join(f"{summary[c]:.3f}" for c in DAVIS_GLOBAL_COLUMNS) + "\n"
    per_sequence = "Sequence,J-Mean,F-Mean\n" + "".join(
        f"{row['Sequence']},{row['J-Mean']:.3f},{row['F-Mean']:.3f}\n"
        for row in summary["per_object"])
    return global_csv, per_sequence
