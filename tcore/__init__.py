"""tcore: T-CoRe (CVPR 2025) video backbones and exact, fast semi-supervised label propagation.

    >>> import tcore
    >>> model = tcore.tcore_vits16(pretrained=True)           # ViT-S/16, Kinetics-400
    >>> masks = tcore.propagate_masks("frames/", "00000.png")  # (T, H, W) uint8 object ids

Importing `tcore` is cheap: submodules load on first use. It also registers `tcore_vits16` and
`tcore_vitb16` in timm's model registry, as soon as timm is imported (see `tcore._timm_hook`).

The model layer, each module importing only those above it in this list:
    constants           ImageNet statistics (no imports)
    errors, files       exceptions, sha256 and atomic writes (no torch)
    devices             device= checked against what this machine has
    architecture        the networks (timm ViTs) and the table of named architectures
    checkpoint          read, convert, strictly load and inspect checkpoint files
    weights             the release registry and downloads (no torch)
    hub                 the Hugging Face format, and exports for stock timm
    backbone            the public backbones: a network + pretrained= + Hub mixin
    models              tcore_vits16 / tcore_vitb16 / load_backbone
    timm_registry       timm's registry entries
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _timm_hook
from ._version import __version__

# public name -> submodule that defines it
_EXPORTS = {
    "tcore_vits16": "models",
    "tcore_vitb16": "models",
    "load_backbone": "models",
    "TCoReBackbone": "backbone",
    "TimmViTBackbone": "backbone",
    "list_models": "weights",
    "get_pretrained": "weights",
    "download": "weights",
    "convert_state_dict": "checkpoint",
    "inspect_checkpoint": "checkpoint",
    "CheckpointError": "errors",
    "WeightsUnavailableError": "errors",
    "Propagator": "propagation",
    "PropagationSession": "propagation",
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
_SUBMODULES = {"architecture", "backbone", "checkpoint", "models", "weights", "hub", "timm_registry", "propagation",
               "io", "metrics", "evaluation", "demo", "cli", "precision"}

__all__ = ["__version__", *_EXPORTS, "metrics"]

_timm_hook.install()


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
    from .checkpoint import convert_state_dict, inspect_checkpoint  # noqa: F401
    from .errors import CheckpointError, WeightsUnavailableError  # noqa: F401
    from .evaluation import evaluate  # noqa: F401
    from .io import read_mask, read_video, write_masks, write_overlay  # noqa: F401
    from .models import load_backbone, tcore_vitb16, tcore_vits16  # noqa: F401
    from .propagation import (PRESETS, Preset, Propagation, PropagationSession, Propagator,  # noqa: F401
                              iter_masks, propagate_keypoints, propagate_labels, propagate_masks, propagate_parts)
    from .weights import download, get_pretrained, list_models  # noqa: F401
