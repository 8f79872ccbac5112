"""VIP part propagation: mean IoU over 20 classes from one global confusion matrix, as T-CoRe's
eval_vip.py computes it (docs/propagation-protocol.md §9.3)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import as_numpy
from ._common import _check_int, _check_same_shape

__all__ = ["VIP_CLASSES", "MIoUAccumulator"]


VIP_CLASSES = (
    "background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat", "socks", "pants",
    "gloves", "scarf", "skirt", "torso-skin", "face", "right-arm", "left-arm", "right-leg",
    "left-leg", "right-shoe", "left-shoe",
)


class MIoUAccumulator:
    """Mean IoU from one global confusion matrix over all frames of all videos (T-CoRe's
    ``eval_vip.py``; the VIP protocol includes frame 0, so pass every frame).

    Ground-truth values outside [0, n_classes) are ignored. IoU_c = TP / (TP + FP + FN); the mIoU
    is the mean over the classes whose union is not empty.

    Args:
        n_classes: number of classes C (20 for VIP).

    Example:
        >>> acc = MIoUAccumulator()
        >>> for gt, pred in videos:      # (T, H, W) class ids each, same size
        ...     acc.update(gt, pred)
        >>> acc.result()["mIoU"]
    """

    def __init__(self, n_classes: int = len(VIP_CLASSES)) -> None:
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        self.n_classes = n_classes
        self.confusion = np.zeros((n_classes, n_classes), np.int64)  # [gt, pred]

    def update(self, gt: Any, pred: Any) -> None:
        """Add frames.

        Args:
            gt: (..., H, W) integer class ids (any shape: one frame (H, W) or a video (T, H, W)).
            pred: integer class ids in [0, C), same shape as gt.

        Raises:
            ValueError: wrong shapes or dtypes, or a predicted id outside [0, C) (the reference
                exits on ids above 20 and miscounts an id of 20).
        """
        gt, pred = as_numpy(gt), as_numpy(pred)
        _check_int(gt, "gt", allow_negative=True)
        _check_int(pred, "pred")
        _check_same_shape(gt, pred)
        if pred.size and pred.max() >= self.n_classes:
            raise ValueError(f"pred holds class id {pred.max()} but there are {self.n_classes} "
                             f"classes (ids 0..{self.n_classes - 1}); check the label mapping")
        keep = (gt >= 0) & (gt < self.n_classes)
        codes = gt[keep].astype(np.int64) * self.n_classes + pred[keep]
        self.confusion += np.bincount(codes, minlength=self.n_classes ** 2).reshape(self.n_classes, -1)

    def result(self) -> dict[str, Any]:
        """Scores so far.

        Returns:
            dict with "mIoU" (float, NaN-skipping mean over classes), "IoU" ((C,) float64, NaN for
            classes absent from both gt and pred), "pixel_accuracy", "mean_accuracy" (NaN-skipping
            mean of per-class recall) and "confusion" ((C, C) int64, rows gt, columns pred).

        Raises:
            ValueError: when no pixel was accumulated.
        """
        hist = self.confusion.astype(np.float64)
        if not hist.any():
            raise ValueError("no ground-truth pixel in [0, n_classes) was accumulated; call "
                             "update(gt, pred) first")
        tp, gt_pixels = np.diag(hist), hist.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (gt_pixels + hist.sum(axis=0) - tp)
            accuracy = tp / gt_pixels
        return {
            "mIoU": float(np.nanmean(iou)),
            "IoU": iou,
            "pixel_accuracy": float(tp.sum() / hist.sum()),
            "mean_accuracy": float(np.nanmean(accuracy)),
            "confusion": self.confusion.copy(),
        }
