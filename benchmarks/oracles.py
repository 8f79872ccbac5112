"""Reference implementations of the official algorithms, written plainly and independently of
`tcore`'s fast ones: the tests' oracles ("equal to the official computation") and the speed
harnesses' baselines (which time tcore against them and check that both agree). Each exists once:

* `literal_propagation`: the label-propagation protocol run the way the official code runs it
  (docs/propagation-protocol.md §5–§7: the padded sequence, dense affinities, radius mask, top-k);
* `official_davis_per_frame`: DAVIS-2017 J and F per object and frame, one frame at a time as the
  official `davis2017-evaluation` does (docs/propagation-protocol.md §9.1), dilating with OpenCV
  when it is installed (as the official code), else with an exact numpy disk dilation.

Not part of the installed package: the harnesses here import it as `oracles` (a script's folder is
on its path), the tests as `benchmarks.oracles` (tests/conftest.py puts the clone's root on the path,
as for `training`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

try:
    import cv2
except ImportError:  # numpy dilation instead (the same result: a binary dilation by the same disk)
    cv2 = None

__all__ = ["literal_propagation", "official_bmap", "official_disk", "official_f", "official_davis_per_frame"]


# --------------------------------------------------------------------------------------------------
# label propagation

def literal_propagation(features: torch.Tensor, first_labels: torch.Tensor, topk: int, temperature: float,
                        radius: float, n_context: int, *, pad_with_first: bool = True,
                        radius_on_first: bool = False, query_chunk: int | None = None) -> torch.Tensor:
    """(T, h, w, D), (C, h, w) -> (T, C, h, w), written the way the official code runs.

    Args:
        features: (T, h, w, D) unit features.
        first_labels: (C, h, w) soft labels of frame 0.
        topk, temperature, radius, n_context: the protocol's hyper-parameters.
        pad_with_first, radius_on_first: `False` and `True` are the two classic mistakes (frame 0's
            multiplicities dropped; frame 0 restricted to the radius), used to show tests can fail.
        query_chunk: score this many queries at a time (the official code uses 100; the result is
            the same, only the memory and the time change). None: all at once.
    """
    frames, h, w, dim = features.shape
    n_cells, n_classes = h * w, first_labels.shape[0]
    feats = features.reshape(frames, n_cells, dim).float()  # (T, N, D)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cells = torch.stack([yy.flatten(), xx.flatten()], 1).double()  # (N, 2)
    mask = torch.where(torch.cdist(cells, cells) < radius, 0.0, -1e10).float()  # (N_key, N_query)
    mask = mask.to(features.device)
    offset = n_context if pad_with_first else 0  # the padded sequence puts real frame t at index t + n_context
    real = [max(0, e - offset) for e in range(frames + offset)]  # extended index -> real frame
    chunk = query_chunk or n_cells

    def slots_of(t: int) -> list[int]:
        """Extended indices of target t's keys: frame 0, then the short-term slots."""
        if pad_with_first:
            return [0, *range(t, t + n_context)]
        return [0, *range(max(1, t - n_context), t)]  # frame 0 once, then the distinct previous frames

    labels = {e: first_labels.reshape(n_classes, n_cells).float() for e, r in enumerate(real) if r == 0}
    out = [first_labels.float()]
    for t in range(1, frames):
        slots = slots_of(t)
        keys = feats[[real[e] for e in slots]]  # (S, N_key, D), gathered per target as the official code
        context = torch.cat([labels[e] for e in slots], 1)  # (C, S*N_key)
        preds = []
        for q0 in range(0, n_cells, chunk):
            scores = torch.einsum("skd,qd->skq", keys, feats[t, q0:q0 + chunk])  # (S, N_key, n_q)
            scores[0 if radius_on_first else 1:] += mask[:, q0:q0 + chunk]
            scores = (scores / temperature).reshape(len(slots) * n_cells, -1)  # (S*N_key, n_q)
            values, index = scores.topk(topk, dim=0)  # (K, n_q)
            weights = torch.softmax(values, dim=0)
            preds.append((context[:, index] * weights[None]).sum(1))  # (C, n_q)
        pred = torch.cat(preds, 1)  # (C, N_query)
        labels[t + offset] = pred
        out.append(pred.reshape(n_classes, h, w))
    return torch.stack(out)


# --------------------------------------------------------------------------------------------------
# DAVIS-2017 J and F, frame by frame

def official_bmap(mask: np.ndarray) -> np.ndarray:
    """The official `_seg2bmap` for a same-size map: pixels that differ from a right/down neighbour."""
    east, south, south_east = np.zeros_like(mask), np.zeros_like(mask), np.zeros_like(mask)
    east[:, :-1] = mask[:, 1:]
    south[:-1, :] = mask[1:, :]
    south_east[:-1, :-1] = mask[1:, 1:]
    b = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
    b[-1, :] = mask[-1, :] ^ east[-1, :]
    b[:, -1] = mask[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def official_disk(radius: int) -> np.ndarray:
    """skimage's disk(radius) as uint8: offsets with dy^2 + dx^2 <= radius^2."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.uint8)


def _dilate(b: np.ndarray, disk: np.ndarray) -> np.ndarray:
    if cv2 is not None:
        return cv2.dilate(b.astype(np.uint8), disk) > 0
    radius = disk.shape[0] // 2
    height, width = b.shape
    padded = np.zeros((height + 2 * radius, width + 2 * radius), bool)
    padded[radius:radius + height, radius:radius + width] = b
    out = np.zeros_like(b)
    for dy, dx in zip(*np.nonzero(disk)):
        out |= padded[dy:dy + height, dx:dx + width]
    return out


def official_f(pred: np.ndarray, gt: np.ndarray, disk: np.ndarray | None = None) -> float:
    """Boundary F-measure of two (H, W) bool masks, with the official empty-boundary conventions.

    `disk` defaults to the official radius, ceil(0.008 * image diagonal).
    """
    if disk is None:
        disk = official_disk(math.ceil(0.008 * np.linalg.norm(pred.shape)))
    bp, bg = official_bmap(pred), official_bmap(gt)
    dp, dg = _dilate(bp, disk), _dilate(bg, disk)
    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 and n_g > 0:
        precision, recall = 1, 0
    elif n_p > 0 and n_g == 0:
        precision, recall = 0, 1
    elif n_p == 0 and n_g == 0:
        precision, recall = 1, 1
    else:
        precision, recall = np.sum(bp & dg) / float(n_p), np.sum(bg & dp) / float(n_g)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def official_davis_per_frame(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F, (K, T-2) each (frames 1..T-2), one object and one frame at a time.

    Args:
        gt, pred: (T, H, W) int ids; 255 in `gt` is void (background); the objects are 1..gt[0].max().
    """
    gt = np.where(gt == 255, 0, gt)
    n_obj = int(gt[0].max())
    disk = official_disk(math.ceil(0.008 * np.linalg.norm(gt.shape[1:])))
    j, f = np.zeros((n_obj, len(gt) - 2)), np.zeros((n_obj, len(gt) - 2))
    for k in range(1, n_obj + 1):
        for t in range(1, len(gt) - 1):
            g, p = gt[t] == k, pred[t] == k
            union = np.sum(g | p)
            j[k - 1, t - 1] = 1 if union == 0 else np.sum(g & p) / union
            f[k - 1, t - 1] = official_f(p, g, disk)
    return j, f
