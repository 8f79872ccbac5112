"""Label propagation: one exact, streaming engine and the front ends built on it.

The protocol, what tcore does differently and why the engine is exact: docs/propagation-protocol.md.

Modules:
    presets       the paper's protocol constants (`Preset`) and the working size of a video
    annotations   masks given at any frames: read, checked, turned into object ids
    labels        labels at the feature grid: one-hot and keypoint heatmaps in, ids and points out
    engine        the streaming engine (`Propagator`) and `propagate_labels`
    encoder       a video opened with a backbone at its working size (`VideoEncoder`): frames ->
                  L2-normalised patch features; also what `tcore.pictures` encodes with
    api           the front ends: `propagate_masks`, `iter_masks`, `propagate_parts`,
                  `propagate_keypoints`
"""
from .api import MaskStream, Propagation, iter_masks, propagate_keypoints, propagate_masks, propagate_parts
from .engine import Propagator, propagate_labels
from .presets import PRESETS, Preset
from .session import PropagationSession

__all__ = ["PRESETS", "MaskStream", "Preset", "Propagation", "PropagationSession", "Propagator", "iter_masks",
           "propagate_keypoints", "propagate_labels", "propagate_masks", "propagate_parts"]
