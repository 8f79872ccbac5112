"""JHMDB pose propagation: PCK@alpha per joint, pooled over frames and videos, mean over joints,
as T-CoRe's eval_pck.py computes it (docs/propagation-protocol.md §9.2)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._arrays import as_numpy

__all__ = ["PCK_ALPHAS", "PCKAccumulator", "pck"]


# JHMDB: thresholds reported by the reference (the paper quotes 0.1 and 0.2).
PCK_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)


class PCKAccumulator:
    """PCK@alpha of propagated keypoints, pooled over all frames of all videos (T-CoRe's
    ``eval_pck.py``).

    Per frame, the scale is 0.6 x the diagonal of the ground-truth box of the visible joints (as the
    reference, the box's lower corner starts at 1e6 and its upper corner at -1). Frame 0 (the given
    frame) is skipped. A visible joint is correct at alpha when ``|pred - gt| / scale <= alpha``.
    PCK of a joint = 100 x correct / visible entries over everything accumulated; the reported
    value is the mean over the joints.

    Visibility (`visibility=`):
        "prediction" (default, the reference's rule): a joint is visible where its predicted x is
            not negative; the propagation marks a vanished heatmap with x = -1. Vanished joints are
            dropped, not counted as misses.
        "ground_truth": a joint is visible where `gt_visible` says so (default: every joint); a
            vanished prediction (x < 0) then counts as a miss.

    Args:
        alphas: thresholds, as fractions of the per-frame scale.
        visibility: "prediction" (reference) or "ground_truth".

    Example:
        >>> acc = PCKAccumulator()
        >>> for gt, pred in videos:       # (T, K, 2) pixels each
        ...     acc.update(gt, pred)
        >>> acc.result()["PCK"][0.1]      # percent
    """

    def __init__(self, alphas: Sequence[float] = PCK_ALPHAS, visibility: str = "prediction") -> None:
        if visibility not in ("prediction", "ground_truth"):
            raise ValueError(f"visibility must be 'prediction' or 'ground_truth', got {visibility!r}")
        self.alphas = tuple(float(a) for a in alphas)
        self.visibility = visibility
        self._correct: np.ndarray | None = None  # (A, K) int64
        self._total: np.ndarray | None = None  # (K,) int64

    def update(self, gt: Any, pred: Any, gt_visible: Any = None) -> None:
        """Add one video.

        Args:
            gt: (T, K, 2) ground-truth joints (x, y) in pixels, 0-based (JHMDB's pos_img - 1).
            pred: (T, K, 2) predicted joints (x, y) in pixels; x < 0 marks a vanished joint.
            gt_visible: (T, K) bool, only with visibility="ground_truth" (default all True).

        Raises:
            ValueError: wrong shapes, a joint count that differs from earlier videos, or
                gt_visible given with visibility="prediction".
        """
        gt, pred = as_numpy(gt).astype(np.float64), as_numpy(pred).astype(np.float64)
        if gt.ndim != 3 or gt.shape[-1] != 2:
            raise ValueError(f"gt must have shape (T, K, 2) with (x, y) last, got {tuple(gt.shape)}; "
                             f"transpose JHMDB's pos_img (2, K, T) with .transpose(2, 1, 0)")
        if pred.shape != gt.shape:
            raise ValueError(f"pred must have the shape of gt {tuple(gt.shape)}, "
                             f"got {tuple(pred.shape)}")
        if self._total is not None and len(self._total) != gt.shape[1]:
            raise ValueError(f"gt has {gt.shape[1]} joints but earlier videos had {len(self._total)}")
        visible = self._visible(pred, gt_visible)
        correct, total = _pck_counts(gt, pred, visible, self.alphas)
        if self._total is None:
            self._correct, self._total = correct, total
        else:
            self._correct += correct
            self._total += total

    def _visible(self, pred: np.ndarray, gt_visible: Any) -> np.ndarray:
        if self.visibility == "prediction":
            if gt_visible is not None:
                raise ValueError("gt_visible is only used with visibility='ground_truth'; create "
                                 "PCKAccumulator(visibility='ground_truth') to use it")
            return ~(pred[..., 0] < 0)
        if gt_visible is None:
            return np.ones(pred.shape[:2], bool)
        visible = as_numpy(gt_visible)
        if visible.shape != pred.shape[:2]:
            raise ValueError(f"gt_visible must have shape (T, K) = {pred.shape[:2]}, "
                             f"got {visible.shape}")
        return visible.astype(bool)

    def result(self) -> dict[str, Any]:
        """PCK so far.

        Returns:
            dict with "PCK": {alpha: mean over joints, percent}, "PCK_per_joint": {alpha: (K,)
            float64 percent, NaN for a joint never visible}, "n_per_joint": (K,) int64 number of
            scored entries. A joint without entries is left out of the mean (the reference fails).

        Raises:
            ValueError: when nothing was accumulated or no joint was ever visible.
        """
        if self._total is None or not self._total.any():
            raise ValueError("no visible joint in frames 1..T-1 was accumulated; call "
                             "update(gt, pred) with at least one video of two or more frames")
        with np.errstate(divide="ignore", invalid="ignore"):
            per_joint = 100.0 * self._correct / self._total  # (A, K)
        return {
            "PCK": {a: float(np.nanmean(row)) for a, row in zip(self.alphas, per_joint)},
            "PCK_per_joint": dict(zip(self.alphas, per_joint)),
            "n_per_joint": self._total.copy(),
        }


def _pck_counts(gt: np.ndarray, pred: np.ndarray, visible: np.ndarray,
                alphas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Correct (A, K) and total (K,) entry counts of one video, frame 0 skipped."""
    gx, gy = gt[..., 0], gt[..., 1]  # (T, K)
    lo_x = np.minimum(np.where(visible, gx, np.inf).min(axis=1), 1e6)  # (T,)
    lo_y = np.minimum(np.where(visible, gy, np.inf).min(axis=1), 1e6)
    hi_x = np.maximum(np.where(visible, gx, -np.inf).max(axis=1), -1.0)
    hi_y = np.maximum(np.where(visible, gy, -np.inf).max(axis=1), -1.0)
    dx, dy = hi_x - lo_x, hi_y - lo_y
    scale = 0.6 * np.sqrt(dx * dx + dy * dy)  # (T,)
    ex, ey = pred[..., 0] - gx, pred[..., 1] - gy
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.sqrt(ex * ex + ey * ey) / scale[:, None]  # (T, K); scale 0 -> inf/nan -> a miss
    dist[pred[..., 0] < 0] = np.inf  # vanished: a miss (only reachable with ground-truth visibility)
    scored = visible.copy()
    scored[:1] = False  # frame 0 is given, not predicted
    correct = np.stack([((dist <= a) & scored).sum(axis=0) for a in alphas]).astype(np.int64)
    return correct, scored.sum(axis=0).astype(np.int64)


def pck(gt: Any, pred: Any, *, alphas: Sequence[float] = PCK_ALPHAS, visibility: str = "prediction",
        gt_visible: Any = None) -> dict[str, Any]:
    """PCK of one video: `PCKAccumulator` with a single `update`.

    Args:
        gt: (T, K, 2) ground-truth joints (x, y) in pixels.
        pred: (T, K, 2) predicted joints (x, y) in pixels; x < 0 marks a vanished joint.
        alphas: thresholds, as fractions of the per-frame scale.
        visibility: "prediction" (reference) or "ground_truth".
        gt_visible: (T, K) bool, only with visibility="ground_truth".

    Returns:
        `PCKAccumulator.result()` of this video.
    """
    acc = PCKAccumulator(alphas, visibility)
    acc.update(gt, pred, gt_visible)
    return acc.result()
