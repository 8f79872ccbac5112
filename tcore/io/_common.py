"""Helpers shared by the I/O modules: tensors without importing torch, and error descriptions."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["as_numpy", "describe", "is_path", "is_tensor", "natural_key"]

_DIGITS = re.compile(r"(\d+)")


def is_tensor(x: Any) -> bool:
    """True when `x` is a torch tensor (never imports torch: a tensor implies torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_path(x: Any) -> bool:
    """True for `str` and `os.PathLike` sources."""
    return isinstance(x, (str, os.PathLike))


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
    if is_path(x):
        return f"path {str(x)!r}"
    return f"{type(x).__name__}"


def natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders file stems as humans do: "2" < "10", "frame_9" < "frame_10".

    Digit runs compare as integers and text runs as lower-case strings; each part is tagged so
    that numbers and text never compare with each other. The full name breaks ties.
    """
    parts = [p for p in _DIGITS.split(path.stem) if p]
    key = tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in parts)
    return key + ((1, path.name),)
