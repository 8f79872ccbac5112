"""Helpers shared by the I/O modules: paths, file order, and (from `tcore._arrays`, the one conversion
module) tensors without importing torch and error descriptions."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .._arrays import as_numpy, describe, is_tensor

__all__ = ["as_numpy", "describe", "is_path", "is_tensor", "natural_key"]

_DIGITS = re.compile(r"(\d+)")


def is_path(x: Any) -> bool:
    """True for `str` and `os.PathLike` sources."""
    return isinstance(x, (str, os.PathLike))


def natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders file stems as humans do: "2" < "10", "frame_9" < "frame_10".

    Digit runs compare as integers and text runs as lower-case strings; each part is tagged so
    that numbers and text never compare with each other. The full name breaks ties.
    """
    parts = [p for p in _DIGITS.split(path.stem) if p]
    key = tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in parts)
    return key + ((1, path.name),)
