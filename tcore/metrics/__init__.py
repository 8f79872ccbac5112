"""Benchmark metrics of the label-propagation protocol, equal to the official evaluation code
(docs/propagation-protocol.md §9).

* DAVIS-2017 (semi-supervised): region similarity J, boundary F-measure F, their mean, recall and
  decay, as the official ``davis2017-evaluation`` computes them (`davis_scores`, `davis_summary`,
  `format_davis_csv`).
* JHMDB: PCK@alpha per joint, pooled over frames and videos, mean over joints (`PCKAccumulator`,
  `pck`), as T-CoRe's ``eval_pck.py``.
* VIP: mean IoU over 20 part classes from one global confusion matrix (`MIoUAccumulator`), as
  T-CoRe's ``eval_vip.py``.

Only numpy (and, optionally, torch for inputs and for running DAVIS on a GPU) is used: no OpenCV, no
scikit-image, no scipy. The boundary dilation is an exact binary dilation by the same disk, computed
from shifted ORs on a crop around each object, so every count, hence every score, is bit-identical to
the official one.

    >>> s = davis_scores(gt, pred)          # (T, H, W) object ids, one sequence
    >>> s["J"], s["F"], s["JF"]             # one value per object, in object-id order
"""
from __future__ import annotations

from .davis import (
                    DAVIS_BOUNDARY_FRACTION,
                    DAVIS_GLOBAL_COLUMNS,
                    DAVIS_VOID_ID,
                    davis_boundary_radius,
                    davis_scores,
                    davis_summary,
                    format_davis_csv,
)
from .jhmdb import PCK_ALPHAS, PCKAccumulator, pck
from .vip import VIP_CLASSES, MIoUAccumulator

__all__ = [
    "DAVIS_BOUNDARY_FRACTION",
    "DAVIS_GLOBAL_COLUMNS",
    "DAVIS_VOID_ID",
    "MIoUAccumulator",
    "PCKAccumulator",
    "PCK_ALPHAS",
    "VIP_CLASSES",
    "davis_boundary_radius",
    "davis_scores",
    "davis_summary",
    "format_davis_csv",
    "pck",
]
