"""Input checks shared by the metrics (arrays and tensors are converted by `tcore._arrays`)."""
from __future__ import annotations

import numpy as np


def _check_ndim(x: np.ndarray, name: str, ndim: int, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got shape {tuple(x.shape)}")


def _check_int(x: np.ndarray, name: str, allow_negative: bool = False) -> None:
    if x.dtype.kind not in "biu":
        raise ValueError(f"{name} must hold integer ids, got dtype {x.dtype}; convert a soft or float "
                         f"mask to ids first (e.g. np.rint(x).astype(np.uint8))")
    if not allow_negative and x.size and x.dtype.kind == "i" and x.min() < 0:
        raise ValueError(f"{name} must hold non-negative ids, got minimum {x.min()}")


def _check_same_shape(gt: np.ndarray, pred: np.ndarray) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got gt {tuple(gt.shape)} and pred "
                         f"{tuple(pred.shape)}; resize pred to the ground-truth size (nearest) first")
