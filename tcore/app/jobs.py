"""What the web app does, without the page: models, painted masks, propagation runs, downloads.

Everything here calls tcore's public functions with the page's inputs, so the page shows the
API's own results and the API's own error messages. No Gradio import: this is tested directly.
"""
from __future__ import annotations

import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidInputError
from ..io import DAVIS_PALETTE

__all__ = [
    "OBJECT_COLOURS",
    "RANDOM_PREFIX",
    "ModelCache",
    "RunResult",
    "ids_from_layers",
    "parse_size",
    "propagate_to_files",
    "write_demo_clip",
]

_N_OBJECTS = 8  # brush colours offered in the page
OBJECT_COLOURS: list[tuple[int, int, int]] = [tuple(int(c) for c in DAVIS_PALETTE[i])
                                              for i in range(1, _N_OBJECTS + 1)]
"""Brush colour of objects 1..8: the DAVIS palette, so the masks written keep the painted colours."""
RANDOM_PREFIX = "random:"  # "random:tcore_vits16": that architecture with random weights (no download)
_RANDOM_ARCHS = ("tcore_vits16", "tcore_vitb16")
_PAINTED_ALPHA = 128  # a painted pixel: alpha at least this (brush edges are anti-aliased)


def ids_from_layers(layers: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Object ids painted on the mask editor's layers.

    A pixel belongs to the object whose brush colour is nearest to its colour where the layer is
    at least half opaque (brush edges are anti-aliased); later layers paint over earlier ones;
    erased and unpainted pixels are background.

    Args:
        layers: (H, W, 4) uint8 RGBA images at the frame size (H, W).
        size: (H, W) of the frames.

    Returns:
        (H, W) uint8 ids in 0..8 (`OBJECT_COLOURS[i - 1]` is object i's colour).

    Raises:
        InvalidInputError: a layer of another size (the page lost the frame size).
    """
    ids = np.zeros(size, dtype=np.uint8)
    colours = np.asarray(OBJECT_COLOURS, dtype=np.int64)  # (N, 3)
    for layer in layers:
        if layer.ndim != 3 or layer.shape[2] != 4 or tuple(layer.shape[:2]) != tuple(size):
            raise InvalidInputError(f"painted mask: a layer of shape {layer.shape} does not match the "
                                    f"{size[1]}x{size[0]} frames; open the video again to reset the editor")
        painted = layer[..., 3] >= _PAINTED_ALPHA
        rgb = layer[painted, :3].astype(np.int64)  # (P, 3)
        nearest = ((rgb[:, None, :] - colours[None]) ** 2).sum(-1).argmin(1)  # (P,)
        ids[painted] = nearest + 1
    return ids


def parse_size(height: float | None, width: float | None) -> tuple[int, int] | None:
    """The page's height and width boxes -> `size=` (None when both are empty or 0)."""
    h, w = int(height or 0), int(width or 0)
    if h == 0 and w == 0:
        return None
    if h <= 0 or w <= 0:
        raise InvalidInputError(f"size: give both the height and the width (got {h} x {w}), or leave both at 0 "
                                "for the preset's size")
    return h, w


class ModelCache:
    """Backbones by (model, device), loaded once: the page switches between them without reloading.

    `model` is anything `propagate_masks(model=...)` accepts as a string (a released name, a
    checkpoint path, a `save_pretrained` folder, a Hub repo id, a timm name), or
    "random:<tcore architecture>" for random weights (seeded; no download).
    """

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, model: str, device: str | None) -> Any:
        """The backbone, in eval mode on `device` (None: the best available)."""
        from ..devices import resolve_device

        device = str(resolve_device(device))
        key = (model.strip(), device)
        with self._lock:
            if key not in self._models:
                self._models[key] = _load(key[0], device)
            return self._models[key]


def _load(model: str, device: str) -> Any:
    import torch

    from .. import models

    if model.startswith(RANDOM_PREFIX):
        arch = model[len(RANDOM_PREFIX):]
        if arch not in _RANDOM_ARCHS:
            raise InvalidInputError(f"model {model!r}: random weights exist for "
                                    f"{', '.join(RANDOM_PREFIX + a for a in _RANDOM_ARCHS)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return models.load_backbone(getattr(models, arch)(pretrained=False), device=device)
    return models.load_backbone(model or None, device=device)


@dataclass(frozen=True)
class RunResult:
    """The files one propagation run wrote."""

    overlay: Path  # overlay video (mp4)
    masks_zip: Path  # indexed PNG masks, one per frame, named like the frames
    n_frames: int
    n_objects: int


def propagate_to_files(video: Any, first_mask: str | np.ndarray, out_dir: Path, *, model: Any,
                       preset: str | None, size: tuple[int, int] | None, device: str | None,
                       progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Propagate with `tcore.iter_masks` (`propagate_masks`, streamed) and write the overlay video and
    the zip of masks.

    Args:
        video: a video file, a frame folder, or anything else `read_video` accepts.
        first_mask: a mask file (any convention `read_mask` reads) or (H, W) uint8 painted ids.
        out_dir: a new folder for this run's files.
        model, preset, size, device: as `propagate_masks`.
        progress: called with (frames done, total) after each frame.
    """
    from ..io import read_video, write_mask, write_overlay
    from ..propagation import iter_masks

    frames = read_video(video)
    stream = iter_masks(frames, first_mask, model=model, preset=preset, size=size, device=device, progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    masks_dir = out_dir / "masks"

    def masks():
        for t, mask in stream:
            write_mask(masks_dir / f"{stream.names[t]}.png", mask, stream.palette)
            if progress is not None:
                progress(t + 1, len(frames))
            yield mask

    overlay = write_overlay(out_dir / "overlay.mp4", read_video(video), masks(), palette=stream.palette,
                            fps=frames.fps or 10)
    masks_zip = out_dir / "masks.zip"
    with zipfile.ZipFile(masks_zip, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed
        for png in sorted(masks_dir.iterdir()):
            archive.write(png, f"masks/{png.name}")
    return RunResult(overlay, masks_zip, len(frames), int((stream.ids != 0).sum()))


def write_demo_clip(out_dir: Path) -> tuple[Path, Path]:
    """The built-in demo clip (`tcore demo`'s) as a folder of PNG frames, and its first mask.

    Returns:
        (frame folder, first-mask PNG).
    """
    from PIL import Image

    from ..demo import make_demo_clip
    from ..io import write_mask

    frames, masks = make_demo_clip()
    folder = out_dir / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png", compress_level=1)
    return folder, write_mask(out_dir / "first_mask.png", masks[0])
