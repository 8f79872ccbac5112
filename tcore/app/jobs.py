"""What the web app does, without the page: models, painted masks, propagation runs, downloads.

Everything here calls tcore's public functions with the page's inputs, so the page shows the
API's own results and the API's own error messages. No Gradio import: this is tested directly.
"""
from __future__ import annotations

import logging
import shutil
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidInputError
from ..io import DAVIS_PALETTE, overlay

__all__ = [
    "OBJECT_COLOURS",
    "RANDOM_PREFIX",
    "ModelCache",
    "RunResult",
    "SessionRun",
    "ids_from_layers",
    "parse_size",
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
    """The files written after a run or a correction, and what changed."""

    overlay: Path  # overlay video (mp4) of every frame's current mask
    masks_zip: Path  # indexed PNG masks, one per frame, named like the frames ("masks/00000.png", ...)
    given_zip: Path  # the masks given so far (first mask, corrections), named like their frames
    n_frames: int
    n_objects: int
    updated: tuple[int, ...]  # the frames whose masks were propagated (again) by this run
    warnings: tuple[str, ...] = ()  # what the API logged meanwhile (e.g. an object too small for the grid)


class SessionRun:
    """One video opened for propagation in the page: a `tcore.PropagationSession` (the features of
    every frame it has encoded are kept), the current mask of every frame, and the files written from them.

    `run(first_mask)` propagates frame 0's mask through every frame; `correct(t, ids)` gives frame
    t's painted objects and re-propagates the frames the session yields (t and after; every frame
    when an object id is new), reading the kept features: the backbone never runs again for a frame.
    Every mask written equals that frame of `tcore.propagate_masks(video, masks given so far)`.
    After each, the PNGs of the frames that changed are rewritten in `folder/masks/`, and the overlay
    video, masks.zip and given.zip are written whole into a new folder (a new URL for the page).

    Args:
        video: a video file, a frame folder, or anything else `read_video` accepts.
        folder: this run's folder (the session's spill file goes there too); removed by `close`.
        model, preset, size, device: as `propagate_masks`.
        key: what the session was opened with (the page's video and settings), for `matches`.
    """

    def __init__(self, video: Any, folder: Path, *, model: Any, preset: str | None, size: tuple[int, int] | None,
                 device: str | None, key: tuple = ()) -> None:
        from ..io import read_video
        from ..propagation import PropagationSession

        self.key, self.folder = key, folder
        self.frames = read_video(video)
        folder.mkdir(parents=True, exist_ok=True)
        self.session = PropagationSession(video, model=model, preset=preset, size=size, device=device,
                                          spill_dir=folder, progress=False)
        self.masks: np.ndarray | None = None  # (T, H, W) uint8 current ids, once a run has completed
        self.palette: np.ndarray | None = None  # the first mask's palette, when it had one
        self.closed = False
        self._version = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.session)

    def matches(self, key: tuple) -> bool:
        """Whether this open session was opened with `key` (then a run may reuse its features)."""
        return not self.closed and key == self.key

    def run(self, first_mask: str | np.ndarray, progress: Callable[[int, int], None] | None = None) -> RunResult:
        """Propagate frame 0's mask through every frame (forgetting the masks given before).

        Args:
            first_mask: a mask file (any convention `read_mask` reads) or (H, W) uint8 painted ids.
            progress: called with (frame index + 1, number of frames) after each frame.

        Raises:
            InvalidInputError: the API's message for a mask `propagate_masks(video, first_mask)` refuses.
        """
        from ..propagation.annotations import read_annotations

        frames = self.frames
        read_annotations(first_mask, frames.names, tuple(frames.size))  # the API's checks, before forgetting
        with self._lock:
            self.session.reset()
            self.session.add_mask(0, first_mask)
            return self._propagate(0, progress)

    def correct(self, t: int, ids: np.ndarray, progress: Callable[[int, int], None] | None = None) -> RunResult:
        """Give frame t's painted objects and re-propagate: each painted object takes exactly its
        painted pixels at frame t (where a mask was given at t before, its other objects stay as
        given); every other object keeps its propagated labels there.

        Args:
            t: frame index.
            ids: (H, W) uint8 painted object ids (0: not painted).
            progress: as `run`.

        Raises:
            InvalidInputError: no completed run yet, a frame index out of range, nothing painted.
        """
        if self.masks is None:
            raise InvalidInputError("correction: click Propagate first; a correction updates the frames of a run")
        if not 0 <= t < len(self):
            raise InvalidInputError(f"correction: frame {t} is out of range (0..{len(self) - 1})")
        if not ids.any():
            raise InvalidInputError(f"correction at frame {t}: nothing painted; paint each object to correct with "
                                    "its colour, then Propagate from here")
        with self._lock:
            given = self.session.annotations.get(t)
            if given is not None:  # the painted objects replace theirs; the others stay as given
                ids = np.where(ids > 0, ids, np.where(np.isin(given, np.unique(ids)), 0, given)).astype(np.uint8)
            self.session.add_mask(t, ids)
            return self._propagate(None, progress)

    def view(self, t: int) -> np.ndarray:
        """(H, W, 3) uint8 frame t with its current masks drawn (the frame alone before a run)."""
        frame = np.asarray(self.frames[t])
        return frame if self.masks is None else overlay(frame, self.masks[t], self.palette)

    def close(self) -> None:
        """Free the features, delete the spill file and this run's folder."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self.session.close()
                shutil.rmtree(self.folder, ignore_errors=True)

    def _propagate(self, start: int | None, progress: Callable[[int, int], None] | None) -> RunResult:
        """Consume one session stream: update the masks and their PNGs, then write the other files."""
        from ..io import write_mask

        n, masks_dir = len(self), self.folder / "masks"
        stream = self.session.propagate(start=start)
        masks, self.masks = self.masks, None  # no half-updated masks if the stream fails
        if masks is None:
            masks = np.zeros((n, *self.frames.size), np.uint8)
        updated = []
        with _logged_warnings() as warnings:
            for t, mask in stream:
                masks[t] = mask
                write_mask(masks_dir / f"{stream.names[t]}.png", mask, stream.palette)
                updated.append(t)
                if progress is not None:
                    progress(t + 1, n)
        self.masks, self.palette = masks, stream.palette
        return self._write(int((stream.ids != 0).sum()), tuple(updated), tuple(warnings))

    def _write(self, n_objects: int, updated: tuple[int, ...], warnings: tuple[str, ...]) -> RunResult:
        """The overlay, masks.zip and given.zip of the current masks, in a new folder (the last one goes)."""
        from ..io import write_mask, write_overlay

        given = self.folder / "given"
        shutil.rmtree(given, ignore_errors=True)
        names = self.frames.names
        for t, ids in self.session.annotations.items():
            write_mask(given / f"{names[t]}.png", ids, self.palette)
        self._version += 1
        out = self.folder / f"v{self._version}"
        out.mkdir()
        overlay_path = write_overlay(out / "overlay.mp4", self.frames, self.masks, palette=self.palette)
        result = RunResult(overlay_path, _zip(out / "masks.zip", self.folder / "masks", "masks"),
                           _zip(out / "given.zip", given, "given"), len(self), n_objects, updated, warnings)
        shutil.rmtree(self.folder / f"v{self._version - 1}", ignore_errors=True)
        return result


class _Collected(logging.Handler):
    """A log handler that keeps the messages of warnings and errors."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _logged_warnings() -> Iterator[list[str]]:
    """The warnings tcore.propagation logs inside the block (the page shows them; a log is not seen)."""
    handler, logger = _Collected(), logging.getLogger("tcore.propagation")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _zip(path: Path, folder: Path, name: str) -> Path:
    """A zip of the PNGs in `folder`, under `name/` (stored: PNGs are compressed)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for png in sorted(folder.iterdir()):
            archive.write(png, f"{name}/{png.name}")
    return path


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
