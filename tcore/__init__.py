"""tcore: T-CoRe (CVPR 2025) video backbones and exact, fast semi-supervised label propagation.

    >>> import tcore
    >>> model = tcore.tcore_vits16(pretrained=True)           # ViT-S/16, Kinetics-400
    >>> masks = tcore.propagate_masks("frames/", "00000.png")  # (T, H, W) uint8 object ids

Importing `tcore` is cheap: submodules load on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> submodule that defines it
_EXPORTS = {
    "tcore_vits16": "models",
    "tcore_vitb16": "models",
    "load_backbone": "models",
    "create_backbone": "models",
    "TCoReBackbone": "backbone",
    "TimmViTBackbone": "backbone",
    "list_models": "weights",
    "get_pretrained": "weights",
    "download": "weights",
    "convert_state_dict": "weights",
    "inspect_checkpoint": "weights",
    "CheckpointError": "weights",
    "WeightsUnavailableError": "weights",
    "Propagator": "propagation",
    "propagate_labels": "propagation",
    "propagate_masks": "propagation",
    "propagate_keypoints": "propagation",
    "propagate_parts": "propagation",
    "iter_masks": "propagation",
    "Propagation": "propagation",
    "Preset": "propagation",
    "PRESETS": "propagation",
    "read_video": "io",
    "read_mask": "io",
    "write_masks": "io",
    "write_overlay": "io",
    "evaluate": "evaluation",
}
_SUBMODULES = {"backbone", "models", "weights", "hub", "propagation", "io", "metrics", "evaluation", "demo", "cli",
               "precision"}

__all__ = ["__version__", *_EXPORTS, "metrics"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'tcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import metrics  # noqa: F401
    from .backbone import TCoReBackbone, TimmViTBackbone  # noqa: F401
    from .evaluation import evaluate  # noqa: F401
    from .io import read_mask, read_video, write_masks, write_overlay  # noqa: F401
    from .models import create_backbone, load_backbone, tcore_vitb16, tcore_vits16  # noqa: F401
    from .propagation import (PRESETS, Preset, Propagation, Propagator, iter_masks, propagate_keypoints,  # noqa: F401
                              propagate_labels, propagate_masks, propagate_parts)
    from .weights import (CheckpointError, WeightsUnavailableError, convert_state_dict, download,  # noqa: F401
                          get_pretrained, inspect_checkpoint, list_models)
