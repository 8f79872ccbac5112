"""Videos as frame folders: which folders of a frames root are videos, the manifest that lists them,
their frames, and sandwich sampling (docs/training-recipe.md §2). No torch: `training.prepare`
uses this module too.

Videos are folders of frame images (names sorted as strings, as the reference does). Two
layouts: "kinetics" (`<root>/<split>/<class>/<video>/<frames>`, the official one) and "folders"
(any folder of frame folders, found recursively). Hidden and temporary folders (a name starting
with "." or ending in ".partial", e.g. a video `training.prepare` was writing when it was killed)
are never videos. The list of videos is a manifest: one folder per line, relative to the root; it
is written once per run and reused on resume.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tcore.errors import InvalidInputError, MissingFileError
from tcore.files import write_text_atomic
from tcore.io import IMAGE_SUFFIXES

__all__ = ["FRAME_EXTENSIONS", "is_hidden", "list_frames", "scan_videos", "write_manifest", "read_manifest",
           "sample_frame_indices", "sandwich_fits"]

FRAME_EXTENSIONS = tuple(sorted(IMAGE_SUFFIXES))  # tcore's frame files (`str.endswith` takes a tuple)


def is_hidden(name: str) -> bool:
    """True for a hidden or temporary folder name ('.x', 'x.partial'): never a video, never a class."""
    return name.startswith(".") or name.endswith(".partial")


def list_frames(video_dir: str | Path) -> list[str]:
    """Frame file names of one video folder, sorted as strings (the reference's order)."""
    return sorted(n for n in os.listdir(video_dir) if n.lower().endswith(FRAME_EXTENSIONS))


def scan_videos(root: str | Path, layout: str = "kinetics", split: str = "train") -> list[str]:
    """Frame folders under `root`, relative to it, sorted.

    Args:
        root: frames root.
        layout: "kinetics" (`<root>/<split>/<class>/<video>/`) or "folders" (every folder below
            `root` that directly holds frame images).
        split: the sub-folder of the "kinetics" layout.

    Hidden and temporary folders (`is_hidden`) and everything below them are skipped.

    Raises:
        MissingFileError: missing root/split, or no frame folder found.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"data.root={root}: no such folder")
    videos: list[str] = []
    if layout == "kinetics":
        base = root / split
        if not base.is_dir():
            raise MissingFileError(f"data.root={root}: no '{split}' folder; the kinetics layout is "
                                   f"<root>/{split}/<class>/<video>/<frames> (or use data.layout=folders)")
        for cls in sorted(e.name for e in os.scandir(base) if e.is_dir() and not is_hidden(e.name)):
            for vid in sorted(e.name for e in os.scandir(base / cls) if e.is_dir() and not is_hidden(e.name)):
                videos.append(f"{split}/{cls}/{vid}")
    elif layout == "folders":
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(n for n in dirnames if not is_hidden(n))
            if any(n.lower().endswith(FRAME_EXTENSIONS) for n in filenames):
                videos.append(Path(dirpath).relative_to(root).as_posix())
        videos.sort()
    else:
        raise InvalidInputError(f"data.layout={layout!r}: expected 'kinetics' or 'folders'")
    if not videos:
        raise MissingFileError(f"data.root={root}: no video frame folders found (data.layout={layout}); extract "
                               "frames first: python -m training.prepare frames VIDEOS FRAMES")
    return videos


def write_manifest(path: str | Path, videos: list[str]) -> None:
    """One frame folder per line (relative to the frames root), written atomically."""
    write_text_atomic(path, "".join(v + "\n" for v in videos))


def read_manifest(path: str | Path) -> list[str]:
    """The frame folders a manifest lists (relative to the frames root).

    Raises:
        MissingFileError: no such file. InvalidInputError: the file lists no video.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"data.manifest={path}: no such file")
    videos = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not videos:
        raise InvalidInputError(f"data.manifest={path}: the file lists no video")
    return videos


def sample_frame_indices(num_frames: int, rng: np.random.Generator,
                         current_range: tuple[float, float] = (0.3, 0.7),
                         past_range: tuple[float, float] = (0.15, 0.25),
                         future_range: tuple[float, float] = (0.15, 0.25)) -> tuple[int, int, int]:
    """Sandwich sampling (docs/training-recipe.md §2.3): (past, current, future) frame indices of a T-frame video.

    Each bound is a fraction of T computed in floating point and truncated on its own; intervals
    are inclusive; only the future side is clamped to T-1. When the windows do not fit (T in
    {1, 2, 3, 7} with the defaults), one random frame is used three times.

    Raises:
        ValueError: num_frames < 1.
    """
    t = num_frames
    if t < 1:
        raise ValueError(f"num_frames={t}: a video needs at least one frame")
    cs, ce = int(current_range[0] * t), int(current_range[1] * t)
    if cs < ce:
        c = int(rng.integers(cs, ce))  # randint(cs, ce - 1)
        if sandwich_fits(t, current_range, past_range, future_range):
            ps, pe = c - int(past_range[1] * t), c - int(past_range[0] * t)
            fs, fe = c + int(future_range[0] * t), c + int(future_range[1] * t)
            return int(rng.integers(ps, pe + 1)), c, int(rng.integers(fs, min(fe, t - 1) + 1))
    f = int(rng.integers(0, t))
    return f, f, f


def sandwich_fits(num_frames: int, current_range: tuple[float, float] = (0.3, 0.7),
                  past_range: tuple[float, float] = (0.15, 0.25),
                  future_range: tuple[float, float] = (0.15, 0.25)) -> bool:
    """Whether sandwich sampling finds a current frame with past and future windows in a T-frame
    video; if not, every sample of it is one frame used three times (`sample_frame_indices`).

    The windows `c - int(p1 T) < c - int(p0 T) <= c <= c + int(f0 T) < c + int(f1 T)` fit for every
    current frame c or for none: only the truncated fractions of T decide.
    """
    t = num_frames
    return (int(current_range[0] * t) < int(current_range[1] * t) and int(past_range[0] * t) < int(past_range[1] * t)
            and int(future_range[0] * t) < int(future_range[1] * t))
