"""Masks given at any frame: one first-frame mask, a `{frame_index: mask}` mapping, or a folder of
PNGs named like the frames (as YouTube-VOS ships them), read into object ids and checked.

The semantics (documented in docs/propagation.md): an object is absent (probability 0) before the
first frame whose mask shows it; at an annotated frame each object the mask shows takes exactly
its pixels there, and every other pixel keeps its propagated labels for the other objects; the
annotated frame joins the long-term memory like frame 0.

In a folder of masks every image file is a mask (read as `tcore.read_mask` reads it) or an error
that names it: a file named like no frame, two masks for one frame ("00000.png" and
"00000.PNG"), an image format tcore does not read. Other files (notes, hidden files) are ignored.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError
from ..io import IMAGE_SUFFIXES
from ..io._common import natural_key
from ..io.video import UNREAD_IMAGE_SUFFIXES

__all__ = ["Annotations", "MaskInput", "MasksInput", "read_annotations"]

MaskInput = Union[str, os.PathLike, np.ndarray, Any]  # a path, a PIL image, an (H, W) array or tensor
MasksInput = Union[MaskInput, Mapping[int, MaskInput]]


@dataclass(frozen=True)
class Annotations:
    """The masks of a video, read.

    Attributes:
        ids: {frame index: (H, W) uint8 object ids}, in frame order; the first key is where
            propagation starts.
        classes: (C,) uint8 every object id given anywhere, ascending, background 0 first: the
            soft-label channel order.
        palette: (256, 3) uint8 palette of the first palette image given, else None.
    """

    ids: dict[int, np.ndarray]
    classes: np.ndarray
    palette: np.ndarray | None

    @property
    def start(self) -> int:
        """The first annotated frame."""
        return next(iter(self.ids))

    def channels(self, t: int) -> np.ndarray:
        """(n,) int64 channels of the objects frame t's mask shows (background excluded)."""
        present = np.unique(self.ids[t])
        return np.searchsorted(self.classes, present[present != 0])


def _folder_entries(folder: Path, names: Sequence[str]) -> dict[int, Path]:
    """{frame index: mask file} for a folder of masks named like the frames (stems equal)."""
    index = {name: i for i, name in enumerate(names)}
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=natural_key)
    unread = [p.name for p in files if p.suffix.lower() in UNREAD_IMAGE_SUFFIXES]
    if unread:
        raise InvalidInputError(f"masks: folder {str(folder)!r} holds {', '.join(unread[:5])}"
                                f"{', ...' if len(unread) > 5 else ''}, in an image format not read as masks; save "
                                f"masks as PNG (lossless: other formats blur the ids), or move the file out")
    masks = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not masks:
        raise InvalidInputError(f"masks: folder {str(folder)!r} holds no .png mask; name each mask like its frame "
                                f"(e.g. {names[0]}.png)")
    entries: dict[int, Path] = {}
    for mask in masks:
        if mask.stem not in index:
            raise InvalidInputError(f"masks: {str(mask)!r} names no frame of the video (frames are named "
                                    f"{names[0]!r} .. {names[-1]!r}); name each mask like its frame")
        t = index[mask.stem]
        if t in entries:
            raise InvalidInputError(f"masks: folder {str(folder)!r} holds two masks for frame {t} ({mask.stem!r}): "
                                    f"{entries[t].name} and {mask.name}; keep one of them")
        entries[t] = mask
    return entries


def _entries(masks: Any, names: Sequence[str]) -> dict[int, tuple[str, Any]]:
    """{frame index: (argument label for errors, mask source)}, for every accepted form of `masks`."""
    if isinstance(masks, (str, os.PathLike)) and Path(masks).is_dir():
        return {t: (f"masks {str(p)!r}", p) for t, p in sorted(_folder_entries(Path(masks), names).items())}
    if not isinstance(masks, Mapping):
        return {0: (f"first_mask {str(masks)!r}" if isinstance(masks, (str, os.PathLike)) else "first_mask", masks)}
    if not masks:
        raise InvalidInputError("masks: an empty mapping; give at least one {frame_index: mask}")
    entries = {}
    for key in masks:
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise InvalidTypeError(f"masks: keys must be frame indices (int), got {key!r}")
        if not 0 <= int(key) < len(names):
            raise InvalidInputError(f"masks[{key}]: frame index out of range for a video of {len(names)} frames "
                                    f"(0..{len(names) - 1})")
        entries[int(key)] = (f"masks[{int(key)}]", masks[key])
    return dict(sorted(entries.items()))


def read_annotations(masks: Any, names: Sequence[str], frame_size: tuple[int, int],
                     threshold: float | None = None) -> Annotations:
    """Read the masks given for a video.

    Args:
        masks: one mask for frame 0 (a path, PIL image or (H, W) array, as `tcore.read_mask`
            reads it), a mapping {frame index: mask}, or a folder of PNGs whose names are frame
            names (`frames.names`).
        names: the video's frame names, in order.
        frame_size: (H, W) of the frames; every mask must have it.
        threshold: binarise grey or colour masks (as `tcore.read_mask`).

    Returns:
        The `Annotations`.

    Raises:
        InvalidInputError: a mask of another size, a mask with no object, an index out of range, a
            mask file named like no frame, two mask files for one frame, an image format not read
            as a mask, an empty mapping or folder, more than 255 ids in all.
        InvalidTypeError: a mapping key that is not an int.
    """
    from ..io import read_mask

    ids: dict[int, np.ndarray] = {}
    palette = None
    for t, (label, source) in _entries(masks, names).items():
        mask, mask_palette = read_mask(source, threshold=threshold)
        if tuple(mask.shape) != tuple(frame_size):
            raise InvalidInputError(f"{label}: size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from the video "
                                    f"frames' {frame_size[1]}x{frame_size[0]}; resize the mask with nearest-neighbour "
                                    "interpolation (e.g. PIL Image.NEAREST) to the frame size")
        if mask.max(initial=0) == 0:
            what = "the first mask" if label.startswith("first_mask") else "the mask"
            raise InvalidInputError(f"{label}: no object in {what} (every pixel is background 0); give at least one "
                                    "non-zero id (for a soft grey mask use threshold=)")
        ids[t] = mask
        if palette is None:
            palette = mask_palette
    classes = np.union1d(np.concatenate([np.unique(m) for m in ids.values()]), [0]).astype(np.uint8)
    return Annotations(ids, classes, palette)
