"""Readers for the three benchmarks in their official layouts, and their ground truth
(docs/propagation-protocol.md §2; docs/evaluation.md).

* DAVIS-2017 (semi-supervised VOS, val): ``<root>/JPEGImages/480p/<seq>/00000.jpg``,
  ``<root>/Annotations/480p/<seq>/00000.png`` (palette PNGs, 0 background, 1..K objects, 255 void)
  and the split ``<root>/ImageSets/2017/val.txt`` (without it, the paper's list shipped with tcore).
* JHMDB (pose propagation): ``<root>/Rename_Images/<action>/<clip>/00001.png`` and
  ``<root>/joint_positions/<action>/<clip>/joint_positions.mat`` (``pos_img``: 2 x 15 joints x T
  frames, 1-based pixels; read with scipy, the ``eval`` extra). The split is the paper's list
  shipped with tcore (268 clips), or a list file.
* VIP (part propagation): ``<root>/Images/videos<N>/<frame>.jpg`` and
  ``<root>/Annotations/Category_ids/videos<N>/<frame>.png`` (grey class ids 0..19). The split is
  the paper's list shipped with tcore (50 videos), or a list file.

The paper's three lists (the official T-CoRe repository's ``davis_vallist_480_880.txt``,
``jhmdb_vallist.txt`` and ``vip_vallist.txt``, Apache-2.0) ship in ``tcore/evaluation/splits/``
with their licence and source. Whether a split is the paper's is decided by its content: the set
of videos must equal the paper's list, whatever file it came from.

A list file has one video per line: one or two whitespace-separated paths (frames, annotations,
in either order, as in the official lists ``<.mat path> <frames dir>``) or a bare video name. Only
the part of a path after the layout's folder names (``Rename_Images/``, ``Images/``, ...) is used,
so the official lists work whatever their path prefix; every file is then taken from `root`.

Nothing here writes anything: the readers only list folders.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError, MissingFileError
from ..io._images import read_image

__all__ = [
    "BENCHMARK_NAMES",
    "Dataset",
    "DatasetError",
    "Video",
    "davis_ground_truth",
    "frame_names",
    "jhmdb_ground_truth",
    "paper_split",
    "paper_split_file",
    "read_davis",
    "read_index_png",
    "read_jhmdb",
    "read_vip",
]

BENCHMARK_NAMES = ("davis", "jhmdb", "vip", "ytvos", "mose")
JHMDB_JOINTS = 15

_DAVIS_FRAMES = ("JPEGImages", "480p")
_DAVIS_LABELS = ("Annotations", "480p")
_DAVIS_SPLIT = ("ImageSets", "2017", "val.txt")
_JHMDB_FRAMES = ("Rename_Images",)
_JHMDB_LABELS = ("joint_positions",)
_JHMDB_MAT = "joint_positions.mat"
_VIP_FRAMES = ("Images",)
_VIP_LABELS = ("Annotations", "Category_ids")
# how a list file names a benchmark's videos: the layout folders a path's video id follows, and a file name to drop
_LIST_FORMAT: dict[str, tuple[tuple[tuple[str, ...], ...], str | None]] = {
    "davis": ((_DAVIS_FRAMES, _DAVIS_LABELS), None),
    "jhmdb": ((_JHMDB_FRAMES, _JHMDB_LABELS), _JHMDB_MAT),
    "vip": ((_VIP_FRAMES, _VIP_LABELS), None),
}
_PAPER_SPLIT_FILES = {"davis": "davis_vallist_480_880.txt", "jhmdb": "jhmdb_vallist.txt", "vip": "vip_vallist.txt"}

_LAYOUT_HELP = {
    "davis": ("the DAVIS-2017 trainval layout (JPEGImages/480p, Annotations/480p, ImageSets/2017/val.txt); "
              "download DAVIS-2017-trainval-480p.zip from https://davischallenge.org/davis2017/code.html"),
    "jhmdb": ("the JHMDB layout (Rename_Images/<action>/<clip>/00001.png and "
              "joint_positions/<action>/<clip>/joint_positions.mat); download the frames and the joint "
              "positions from http://jhmdb.is.tue.mpg.de/"),
    "vip": ("the VIP layout (Images/videos<N>/*.jpg and Annotations/Category_ids/videos<N>/*.png); "
            "download VIP_Fine from http://sysu-hcp.net/lip/video_parsing.php"),
}


class DatasetError(InvalidInputError):
    """A dataset folder or list file that does not have the expected layout."""


@dataclass(frozen=True)
class Video:
    """One video of a benchmark.

    Attributes:
        name: its id in the split and in the results folder ("car-shadow", "catch/<clip>",
            "videos338").
        frames: its frame folder.
        labels: its annotation folder (DAVIS, VIP) or its ``joint_positions.mat`` (JHMDB).
    """

    name: str
    frames: Path
    labels: Path


@dataclass(frozen=True)
class Dataset:
    """The videos of one benchmark split.

    Attributes:
        benchmark: "davis", "jhmdb" or "vip".
        root: the dataset folder.
        videos: the videos, in the split's order.
        split: where the video list came from (a file path, or "the paper's split (...)").
        official_split: True when the set of videos equals the paper's list (`paper_split`),
            whatever file named them; False for any other set (a subset, another split).
    """

    benchmark: str
    root: Path
    videos: tuple[Video, ...]
    split: str
    official_split: bool


# --------------------------------------------------------------------------------------- helpers


def _check_root(root: str | os.PathLike, benchmark: str, marker: tuple[str, ...]) -> Path:
    """The root folder, or a clear error that says what layout was expected (and a likely fix)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "no such folder"
        raise MissingFileError(f"root {str(path)!r}: {what}; expected {_LAYOUT_HELP[benchmark]}")
    if not path.joinpath(*marker).exists():
        raise DatasetError(f"root {str(path)!r}: no {'/'.join(marker)}; expected {_LAYOUT_HELP[benchmark]}"
                           + _suggest_subfolder(path, marker))
    return path


def _suggest_subfolder(path: Path, marker: tuple[str, ...]) -> str:
    """A hint when the layout sits one or two folders further down (a common mistake)."""
    for depth_glob in ("*", "*/*"):
        for child in sorted(path.glob(depth_glob)):
            if child.is_dir() and child.joinpath(*marker).exists():
                return f". Did you mean --root {child}?"
    return ""


def _require_dir(path: Path, what: str, benchmark: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{what}: missing folder {path}; expected {_LAYOUT_HELP[benchmark]}")


def _video_id(field: str, anchors: tuple[tuple[str, ...], ...], strip_file: str | None) -> str | None:
    """The part of `field` after the last occurrence of one of the anchor folder sequences."""
    parts = Path(field.rstrip("/")).parts
    if strip_file is not None and parts and parts[-1] == strip_file:
        parts = parts[:-1]
    best = None
    for anchor in anchors:
        n = len(anchor)
        for i in range(len(parts) - n, -1, -1):
            if parts[i:i + n] == anchor:
                best = max(best or 0, i + n)
                break
    if best is None:
        return None
    return "/".join(parts[best:]) or None


def _read_list(list_file: str | os.PathLike, anchors: tuple[tuple[str, ...], ...],
               strip_file: str | None = None) -> list[str]:
    """Video ids from a list file (see the module docstring for the accepted lines)."""
    path = Path(list_file).expanduser()
    if not path.is_file():
        raise MissingFileError(f"list file {str(path)!r}: no such file")
    ids: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise DatasetError(f"list file {path}, line {number}: expected a video name or 1-2 paths "
                               f"(frames, annotations), got {len(fields)} fields: {line.strip()!r}")
        found = {_video_id(f, anchors, strip_file) for f in fields} - {None}
        if not found and len(fields) == 1:
            found = {fields[0].strip("/")}
        if len(found) != 1:
            names = sorted(found) or fields
            raise DatasetError(f"list file {path}, line {number}: cannot tell which video it names "
                               f"({', '.join(map(repr, names))}); write one video name per line, or "
                               f"paths containing {' or '.join('/'.join(a) for a in anchors)}")
        video = found.pop()
        if Path(video).is_absolute() or ".." in Path(video).parts:
            raise DatasetError(f"list file {path}, line {number}: video name {video!r} leaves the dataset "
                               f"folder; name videos relative to it")
        if video in seen:
            raise DatasetError(f"list file {path}: video {video!r} is listed twice (lines {seen[video]} "
                               f"and {number}); each video is scored once")
        seen[video] = number
        ids.append(video)
    if not ids:
        raise DatasetError(f"list file {path}: no video listed")
    return ids


def paper_split_file(benchmark: str) -> Path:
    """The list file of the paper's split of a benchmark, shipped with tcore.

    Args:
        benchmark: "davis", "jhmdb" or "vip".

    Returns:
        The path of the packaged ``davis_vallist_480_880.txt``, ``jhmdb_vallist.txt`` or
        ``vip_vallist.txt`` (the official T-CoRe lists; see ``splits/README.md`` next to them).
    """
    from importlib import resources

    if benchmark not in _PAPER_SPLIT_FILES:
        raise InvalidInputError(f"benchmark={benchmark!r}: the paper's splits are {', '.join(_PAPER_SPLIT_FILES)}")
    return Path(str(resources.files(__package__).joinpath("splits", _PAPER_SPLIT_FILES[benchmark])))


@lru_cache(maxsize=None)
def paper_split(benchmark: str) -> tuple[str, ...]:
    """The video names of the paper's split, in its list's order.

    Returns:
        30 DAVIS-2017 val sequences ("bike-packing", ...), 268 JHMDB clips ("<action>/<clip>") or
        50 VIP videos ("videos338", ...), named as the readers name them.
    """
    anchors, strip_file = _LIST_FORMAT[benchmark]
    return tuple(_read_list(paper_split_file(benchmark), anchors, strip_file))


def _split(benchmark: str, list_file: str | os.PathLike | None) -> tuple[list[str], str, bool]:
    """(video names, where they came from, whether they are the paper's split) of a list file, or of
    the paper's list when `list_file` is None."""
    if list_file is None:
        names = list(paper_split(benchmark))
        return names, f"the paper's split ({len(names)} videos, {_PAPER_SPLIT_FILES[benchmark]} shipped with tcore)", True
    anchors, strip_file = _LIST_FORMAT[benchmark]
    names = _read_list(list_file, anchors, strip_file)
    return names, str(Path(list_file).expanduser()), set(names) == set(paper_split(benchmark))


def _check_paper_videos_present(root: Path, names: Sequence[str], frames_dir: tuple[str, ...], benchmark: str) -> None:
    """The paper's split needs every one of its videos: name how many `root` lacks, and the way out."""
    missing = [n for n in names if not root.joinpath(*frames_dir, n).is_dir()]
    if missing:
        raise DatasetError(
            f"root {str(root)!r}: {len(missing)} of the {len(names)} videos of the paper's {benchmark} split are "
            f"missing (first: {'/'.join(frames_dir)}/{missing[0]}); get the whole dataset ({_LAYOUT_HELP[benchmark]}), "
            f"or pass --list (list_file=) naming the videos you have, one per line (not the paper's split)")


def frame_names(folder: Path) -> list[str]:
    """Stems of the frames in a frame folder, in the order the propagation reads them."""
    from ..io import read_video

    return read_video(folder).names


def _frame_label_videos(root: Path, names: Sequence[str], frames_dir: tuple[str, ...], labels_dir: tuple[str, ...],
                        benchmark: str, what: str) -> tuple[Video, ...]:
    """Videos whose frames and per-frame label images live in parallel folders (DAVIS, VIP)."""
    videos = []
    for name in names:
        video = Video(name, root.joinpath(*frames_dir, name), root.joinpath(*labels_dir, name))
        _require_dir(video.frames, f"{what} {name!r}", benchmark)
        _require_dir(video.labels, f"{what} {name!r}", benchmark)
        _check_labels_per_frame(video, benchmark)
        videos.append(video)
    return tuple(videos)


def _check_labels_per_frame(video: Video, benchmark: str) -> None:
    """Every frame needs an annotation PNG of the same name (DAVIS, VIP score every frame)."""
    names = frame_names(video.frames)
    present = {p.stem for p in video.labels.iterdir() if p.suffix.lower() == ".png"}
    missing = [n for n in names if n not in present]
    if missing:
        raise DatasetError(
            f"{benchmark} video {video.name!r}: no annotation {video.labels / (missing[0] + '.png')} "
            f"({len(missing)} of {len(names)} frames lack one); scoring needs ground truth for every "
            f"frame of {video.frames}" + (" (DAVIS-2017 trainval has it; test-dev does not)"
                                          if benchmark == "davis" else ""))


# ------------------------------------------------------------------------------------- readers


def read_davis(root: str | os.PathLike, list_file: str | os.PathLike | None = None) -> Dataset:
    """The DAVIS-2017 val sequences (or those of `list_file`) of a DAVIS-2017 trainval folder.

    Args:
        root: the folder holding JPEGImages/480p, Annotations/480p and ImageSets/2017/val.txt.
        list_file: another split: sequence names (as val.txt) or the official
            ``davis_vallist_480_880.txt`` (``<JPEG dir> <Annotation dir>`` per line). Default: the
            dataset's ImageSets/2017/val.txt, else the paper's list shipped with tcore.

    Returns:
        The `Dataset`; every frame of every sequence has its annotation.

    Raises:
        FileNotFoundError: `root` or `list_file` does not exist.
        DatasetError: a wrong layout, a missing sequence folder or annotation (with the paper's
            list: how many of its sequences are missing).
    """
    path = _check_root(root, "davis", _DAVIS_FRAMES)
    for folder in (_DAVIS_FRAMES, _DAVIS_LABELS):
        _require_dir(path.joinpath(*folder), f"root {str(path)!r}", "davis")
    if list_file is None and path.joinpath(*_DAVIS_SPLIT).is_file():
        list_file = path.joinpath(*_DAVIS_SPLIT)  # the dataset's own split file
    names, split, official = _split("davis", list_file)
    if list_file is None:
        _check_paper_videos_present(path, names, _DAVIS_FRAMES, "davis")
    videos = _frame_label_videos(path, names, _DAVIS_FRAMES, _DAVIS_LABELS, "davis", "davis sequence")
    return Dataset("davis", path, videos, split, official)


def read_jhmdb(root: str | os.PathLike, list_file: str | os.PathLike | None = None) -> Dataset:
    """The JHMDB clips of the paper's split (268 clips, shipped with tcore), or of `list_file`.

    Args:
        root: the folder holding Rename_Images/ and joint_positions/.
        list_file: another split: a list in the official ``jhmdb_vallist.txt`` format
            (``<.mat path> <frames dir>`` per line; any path prefix) or ``<action>/<clip>`` names,
            one per line. Default: the paper's list.

    Returns:
        The `Dataset` (clips named ``<action>/<clip>``).

    Raises:
        FileNotFoundError: `root` or `list_file` does not exist.
        DatasetError: a wrong layout, a clip without frames or without joint_positions.mat (with the
            paper's list: how many of its clips are missing).
    """
    path = _check_root(root, "jhmdb", _JHMDB_LABELS)
    _require_dir(path.joinpath(*_JHMDB_FRAMES), f"root {str(path)!r}", "jhmdb")
    names, split, official = _split("jhmdb", list_file)
    if list_file is None:
        _check_paper_videos_present(path, names, _JHMDB_FRAMES, "jhmdb")
    videos = []
    for name in names:
        video = Video(name, path.joinpath(*_JHMDB_FRAMES, name), path.joinpath(*_JHMDB_LABELS, name, _JHMDB_MAT))
        _require_dir(video.frames, f"jhmdb clip {name!r}", "jhmdb")
        if not video.labels.is_file():
            raise DatasetError(f"jhmdb clip {name!r}: missing {video.labels}; expected {_LAYOUT_HELP['jhmdb']}")
        videos.append(video)
    return Dataset("jhmdb", path, tuple(videos), split, official)


def read_vip(root: str | os.PathLike, list_file: str | os.PathLike | None = None) -> Dataset:
    """The VIP videos of the paper's split (50 videos, shipped with tcore), or of `list_file`.

    Args:
        root: the folder holding Images/ and Annotations/Category_ids/.
        list_file: another split: a list in the official ``vip_vallist.txt`` format
            (``<Images/videosN> <Annotations/Category_ids/videosN>`` per line; any path prefix) or
            ``videosN`` names. Default: the paper's list.

    Returns:
        The `Dataset`; every frame of every video has its annotation.

    Raises:
        FileNotFoundError: `root` or `list_file` does not exist.
        DatasetError: a wrong layout, a missing video folder or annotation (with the paper's list:
            how many of its videos are missing).
    """
    top_level = Path(root).expanduser() / _VIP_LABELS[-1]
    if top_level.is_dir() and not Path(root).expanduser().joinpath(*_VIP_LABELS).exists():
        raise DatasetError(f"root {str(root)!r}: Category_ids/ is at the top level (the ATEN layout) but the paper's "
                           f"lists expect Annotations/Category_ids/; link it: mkdir {Path(root) / 'Annotations'} && "
                           f"ln -s ../Category_ids {Path(root) / 'Annotations' / 'Category_ids'}")
    path = _check_root(root, "vip", _VIP_LABELS)
    _require_dir(path.joinpath(*_VIP_FRAMES), f"root {str(path)!r}", "vip")
    names, split, official = _split("vip", list_file)
    if list_file is None:
        _check_paper_videos_present(path, names, _VIP_FRAMES, "vip")
    videos = _frame_label_videos(path, names, _VIP_FRAMES, _VIP_LABELS, "vip", "vip video")
    return Dataset("vip", path, videos, split, official)


# -------------------------------------------------------------------------------- ground truth


def read_index_png(path: Path) -> np.ndarray:
    """(H, W) uint8 ids of a label PNG: palette indices ("P") or grey values ("L").

    Raises:
        DatasetError: an unreadable file (or one above PIL's decompression-bomb limit), or a colour
            image whose channels differ.
    """
    image = read_image(path, f"label image {path}", DatasetError)  # upright, as frames are read
    if image.mode not in ("P", "L", "RGB", "RGBA", "I;16", "I"):
        raise DatasetError(f"{path}: label image of mode {image.mode!r}; expected palette or grey ids")
    ids = np.asarray(image)
    if ids.ndim == 3:  # grey ids saved as RGB: all channels equal
        if not (ids[..., :3] == ids[..., :1]).all():
            raise DatasetError(f"{path}: a colour label image; expected palette indices or grey class ids")
        ids = ids[..., 0]
    if ids.dtype != np.uint8:
        if ids.max(initial=0) > 255:
            raise DatasetError(f"{path}: label ids above 255")
        ids = ids.astype(np.uint8)
    return ids


def davis_ground_truth(video: Video, names: list[str]) -> np.ndarray:
    """(T, H, W) uint8 palette indices of a sequence's annotations (0 background, 255 void).

    Args:
        video: a DAVIS (or VIP) video.
        names: its frame names (stems), in order.
    """
    return np.stack([read_index_png(video.labels / f"{name}.png") for name in names])


def jhmdb_ground_truth(video: Video) -> np.ndarray:
    """A JHMDB clip's joints: (T, 15, 2) float64 (x, y) pixels, 0-based (``pos_img - 1``).

    Raises:
        ImportError: scipy is missing (the ``eval`` extra).
        DatasetError: no ``pos_img`` of shape (2, 15, T) in the file.
    """
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise MissingDependencyError(
            'reading JHMDB joint_positions.mat needs scipy: pip install "tcore[eval]"') from err
    try:
        contents = loadmat(str(video.labels))
    except (OSError, ValueError, TypeError) as err:
        raise DatasetError(f"{video.labels}: unreadable MATLAB file ({err})") from err
    pos = contents.get("pos_img")
    if pos is None or pos.ndim != 3 or pos.shape[:2] != (2, JHMDB_JOINTS) or pos.shape[2] < 2:
        found = "no pos_img" if pos is None else f"pos_img of shape {pos.shape}"
        raise DatasetError(f"{video.labels}: {found}; expected pos_img of shape (2, {JHMDB_JOINTS}, T) with T >= 2")
    return pos.transpose(2, 1, 0).astype(np.float64) - 1.0  # (2, K, T) -> (T, K, 2), 1-based -> 0-based
