"""Video and mask I/O: lazy frame reading, first-mask conventions, palette PNGs, overlays.

    >>> from tcore.io import read_video, read_mask, write_masks, write_overlay
    >>> frames = read_video("video.mp4")          # lazy: len(frames), frames[i] -> uint8 (H, W, 3)
    >>> ids, palette = read_mask("00000.png")     # (H, W) uint8 object ids, (256, 3) or None
    >>> write_masks("out/", masks, palette, names=frames.names)  # indexed PNGs
    >>> write_overlay("out.mp4", frames, masks, palette)

Numpy and PIL only; video files need PyAV (`pip install "tcore[video]"`), imported on first use.
"""
from __future__ import annotations

from .masks import DAVIS_PALETTE, MAX_GREY_IDS, read_mask, write_mask, write_masks
from .overlay import overlay, write_images, write_overlay
from .video import IMAGE_SUFFIXES, FrameReadError, VideoFrames, read_video

__all__ = [
    "DAVIS_PALETTE",
    "FrameReadError",
    "IMAGE_SUFFIXES",
    "MAX_GREY_IDS",
    "VideoFrames",
    "overlay",
    "read_mask",
    "read_video",
    "write_mask",
    "write_images",
    "write_masks",
    "write_overlay",
]
