"""Arrays and tensors without importing torch: the one conversion used by `tcore.io` and
`tcore.metrics` (numpy only; a tensor can only exist when torch is already loaded)."""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

__all__ = ["as_numpy", "describe", "is_tensor"]


def is_tensor(x: Any) -> bool:
    """True when `x` is a torch tensor (never imports torch: a tensor implies torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view or copy of a numpy array or a torch tensor (detached, moved to the CPU)."""
    if is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def describe(x: Any) -> str:
    """A short description of a value for error messages: type, shape and dtype when it has them."""
    if isinstance(x, np.ndarray) or is_tensor(x):
        kind = "tensor" if is_tensor(x) else "array"
        return f"{kind} of shape {tuple(x.shape)} and dtype {x.dtype}"
    if isinstance(x, (str, os.PathLike)):
        return f"path {str(x)!r}"
    return f"{type(x).__name__}"
