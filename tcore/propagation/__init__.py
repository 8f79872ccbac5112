"""Label propagation: one exact, streaming engine and the front ends built on it.

The protocol, what tcore does differently and why the engine is exact: docs/propagation-protocol.md.
"""
from .api import MaskStream, Propagation, iter_masks, propagate_keypoints, propagate_masks, propagate_parts
from .engine import Propagator, propagate_labels
from .presets import PRESETS, Preset
from .session import PropagationSession

__all__ = ["PRESETS", "MaskStream", "Preset", "Propagation", "PropagationSession", "Propagator", "iter_masks",
           "propagate_keypoints", "propagate_labels", "propagate_masks", "propagate_parts"]
