"""YouTube-VOS (2018/2019) and MOSE: readers of the official layouts, the submission writers and,
when ground truth covers every evaluated frame, J&F with `tcore.metrics`.

Layouts (``--root`` is the dataset folder):

* YouTube-VOS: ``<root>/<split>/JPEGImages/<video>/<frame>.jpg`` (every 5th frame),
  ``<root>/<split>/Annotations/<video>/<frame>.png`` (palette PNGs; in ``valid`` only where objects
  first appear, each PNG showing the objects that appear there) and ``<root>/<split>/meta.json``
  (``videos.<video>.objects.<id>.frames``: the frames to predict). When the "all frames" JPEGs are
  present (``<root>/<split>_all_frames/JPEGImages/<video>/`` or
  ``<root>/all_frames/<split>_all_frames/JPEGImages/<video>/``) propagation runs through every
  frame and the listed frames are written.
* MOSE: ``<root>/JPEGImages/<video>/<frame>.jpg`` and ``<root>/Annotations/<video>/<frame>.png``
  (``valid``: the first frame only), or the same under ``<root>/<split>/``.

Protocol (no number of the paper to match: T-CoRe reports DAVIS, JHMDB and VIP only): the paper's
DAVIS hyper-parameters (top-7, temperature 0.7, radius 20 cells, 20 context frames plus the first
annotated frame), frames at short side 480 with the aspect ratio kept (the "ytvos"/"mose" presets,
each side floored to the patch size), OpenCV nearest back to the original size. Masks given at
later frames join as `tcore.propagate_masks` describes (objects absent before their first mask;
annotated frames in the long-term memory).

Submission (what the evaluation servers take): indexed PNGs with the input palette, zipped:
YouTube-VOS ``submission.zip`` holds ``Annotations/<video>/<frame>.png`` for the frames of
meta.json; MOSE ``submission.zip`` holds ``<video>/<frame>.png`` for every frame.

Scoring when every evaluated frame has a ground-truth PNG (e.g. a train split held out locally):
each video starts from its objects' first-appearance masks only (taken from the ground truth),
and each object is scored with the DAVIS J and F on the evaluated frames after its first one.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import MissingFileError
from ..files import write_atomic
from ..metrics import davis_scores
from .benchmarks import Benchmark, RunSettings, Scored, _missing_output, _naming, _partial, _publish
from .datasets import Dataset, DatasetError, Video, frame_names, read_index_png

__all__ = ["VosVideo", "read_mose", "read_ytvos", "VOS_BENCHMARKS"]

SUBMISSION_NAME = "submission.zip"
_LAYOUT_HELP = {
    "ytvos": ("the YouTube-VOS layout (<split>/JPEGImages/<video>/*.jpg, <split>/Annotations/<video>/*.png, "
              "<split>/meta.json; optionally <split>_all_frames/JPEGImages); download it from "
              "https://youtube-vos.org/dataset/vos/"),
    "mose": ("the MOSE layout (JPEGImages/<video>/*.jpg and Annotations/<video>/*.png, or both under "
             "<split>/); download it from https://henghuiding.github.io/MOSE/"),
}


@dataclass(frozen=True)
class VosVideo(Video):
    """A video of a large VOS benchmark.

    Attributes:
        keep: names of the frames to predict and write (YouTube-VOS: meta.json's; MOSE: all).
        full_gt: True when every kept frame has a ground-truth PNG in `labels` (then the video
            starts from its objects' first-appearance masks and is scored).
    """

    keep: tuple[str, ...] = ()
    full_gt: bool = False


def _pngs(folder: Path) -> set[str]:
    return {p.stem for p in folder.iterdir() if p.suffix.lower() == ".png"} if folder.is_dir() else set()


def _video_names(frames_root: Path, labels_root: Path, list_file: str | os.PathLike | None) -> list[str]:
    if list_file is None:
        return sorted(p.name for p in frames_root.iterdir() if p.is_dir() and (labels_root / p.name).is_dir())
    path = Path(list_file).expanduser()
    if not path.is_file():
        raise MissingFileError(f"list file {str(path)!r}: no such file")
    names = [line.strip().strip("/") for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"list file {path}: no video listed")
    return names


def _make_video(name: str, frames: Path, labels: Path, keep: list[str], benchmark: str) -> VosVideo:
    if not frames.is_dir() or not labels.is_dir():
        missing = frames if not frames.is_dir() else labels
        raise DatasetError(f"{benchmark} video {name!r}: missing folder {missing}; expected {_LAYOUT_HELP[benchmark]}")
    if not _pngs(labels):
        raise DatasetError(f"{benchmark} video {name!r}: no annotation PNG in {labels}; the first frame's mask "
                           f"(at least) is needed")
    return VosVideo(name, frames, labels, tuple(keep), full_gt=set(keep) <= _pngs(labels))


def read_ytvos(root: str | os.PathLike, list_file: str | os.PathLike | None = None, split: str = "valid") -> Dataset:
    """The videos of a YouTube-VOS split (see the module docstring for the layout).

    Args:
        root: the folder holding ``<split>/`` (and ``<split>_all_frames/`` when downloaded).
        list_file: a subset: one video name per line (default: every video of the split).
        split: "valid" (default), "test" or "train" (train has ground truth for every listed frame).

    Raises:
        FileNotFoundError: `root` or `list_file` does not exist.
        DatasetError: a wrong layout, an unreadable meta.json, a video without annotations.
    """
    base = Path(root).expanduser()
    split_dir = base / split
    if not (split_dir / "JPEGImages").is_dir() or not (split_dir / "Annotations").is_dir():
        what = "no such folder" if not base.is_dir() else f"no {split}/JPEGImages and {split}/Annotations"
        error = FileNotFoundError if not base.is_dir() else DatasetError
        raise error(f"root {str(base)!r}: {what}; expected {_LAYOUT_HELP['ytvos']}")
    meta = {}
    if (split_dir / "meta.json").is_file():
        try:
            meta = json.loads((split_dir / "meta.json").read_text())["videos"]
        except (ValueError, KeyError) as err:
            raise DatasetError(f"{split_dir / 'meta.json'}: expected {{'videos': {{...}}}} ({err})") from err
    dense = next((d for d in (base / f"{split}_all_frames" / "JPEGImages",
                              base / "all_frames" / f"{split}_all_frames" / "JPEGImages") if d.is_dir()), None)
    videos = []
    for name in _video_names(split_dir / "JPEGImages", split_dir / "Annotations", list_file):
        sparse = split_dir / "JPEGImages" / name
        if name in meta:
            keep = sorted({f for obj in meta[name]["objects"].values() for f in obj["frames"]})
        else:
            keep = frame_names(sparse) if sparse.is_dir() else []
        frames = dense / name if dense is not None and (dense / name).is_dir() else sparse
        videos.append(_make_video(name, frames, split_dir / "Annotations" / name, keep, "ytvos"))
    if not videos:
        raise DatasetError(f"root {str(base)!r}: no video in {split}/JPEGImages with annotations")
    return Dataset("ytvos", base, tuple(videos), str(list_file or split_dir), official_split=split != "train")


def read_mose(root: str | os.PathLike, list_file: str | os.PathLike | None = None, split: str = "valid") -> Dataset:
    """The videos of a MOSE split (see the module docstring for the layout).

    Args:
        root: the folder holding JPEGImages/ and Annotations/, or ``<split>/`` with them.
        list_file: a subset: one video name per line (default: every video).
        split: the subfolder to use when `root` holds split folders ("valid" default, "train").

    Raises:
        FileNotFoundError: `root` or `list_file` does not exist.
        DatasetError: a wrong layout or a video without annotations.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise MissingFileError(f"root {str(base)!r}: no such folder; expected {_LAYOUT_HELP['mose']}")
    folder = base / split if (base / split / "JPEGImages").is_dir() else base
    if not (folder / "JPEGImages").is_dir() or not (folder / "Annotations").is_dir():
        raise DatasetError(f"root {str(base)!r}: no JPEGImages/ and Annotations/ (nor {split}/ with them); "
                           f"expected {_LAYOUT_HELP['mose']}")
    videos = []
    for name in _video_names(folder / "JPEGImages", folder / "Annotations", list_file):
        frames = folder / "JPEGImages" / name
        keep = frame_names(frames) if frames.is_dir() else []
        videos.append(_make_video(name, frames, folder / "Annotations" / name, keep, "mose"))
    if not videos:
        raise DatasetError(f"root {str(base)!r}: no video in JPEGImages/ with annotations")
    return Dataset("mose", base, tuple(videos), str(list_file or folder), official_split=True)


def first_appearances(video: VosVideo, names: list[str]) -> dict[int, np.ndarray]:
    """{frame index: mask of the objects that first appear there} from full ground truth.

    Args:
        video: a video whose kept frames all have a ground-truth PNG.
        names: the frames' names in propagation order.
    """
    index = {n: i for i, n in enumerate(names)}
    seen: set[int] = set()
    masks = {}
    for name in sorted(video.keep, key=index.__getitem__):
        gt = read_index_png(video.labels / f"{name}.png")
        new = sorted(set(np.unique(gt).tolist()) - {0, 255} - seen)
        if new:
            masks[index[name]] = np.where(np.isin(gt, new), gt, 0).astype(np.uint8)
            seen.update(new)
    return masks


class _Vos(Benchmark):
    """YouTube-VOS or MOSE: predictions under ``Annotations/``, a zipped submission, J&F with full GT."""

    def __init__(self, name: str, zip_prefix: str) -> None:
        self.name = name
        self.zip_prefix = zip_prefix  # the folder the submission zip puts the video folders in

    def output(self, out: Path, video: Video) -> Path:
        return out / "Annotations" / video.name

    def is_finished(self, out: Path, video: Video) -> bool:
        target = self.output(out, video)
        return target.is_dir() and all((target / f"{n}.png").is_file() for n in video.keep)

    def predict(self, video: Video, backbone: torch.nn.Module, out: Path, settings: RunSettings) -> None:
        from ..io import read_video, write_masks
        from ..propagation import iter_masks

        frames = read_video(video.frames)
        names = frames.names
        missing = sorted(set(video.keep) - set(names))
        if missing:
            raise DatasetError(f"{self.name} video {video.name!r}: frame {missing[0]!r} to predict is not in "
                               f"{video.frames}")
        keep = set(video.keep)
        last = max(i for i, n in enumerate(names) if n in keep)
        frames = frames[:last + 1]  # nothing after the last frame to predict is decoded
        masks = first_appearances(video, names) if video.full_gt else video.labels
        stream = iter_masks(frames, masks, **self._front_end_kwargs(backbone, settings))
        tmp = _partial(out, video, settings)
        write_masks(tmp, ((t, m) for t, m in stream if names[t] in keep), palette=stream.palette, names=names)
        _publish(tmp, self.output(out, video))

    def score(self, dataset: Dataset, out: Path, settings: RunSettings) -> Scored:
        zip_path = self._write_submission(dataset, out)
        details = {"submission": str(zip_path)}
        if not all(v.full_gt for v in dataset.videos):
            return Scored(scores={}, details=details, files={},
                          notes=(f"no ground truth for every frame: predictions only; upload {zip_path} to the "
                                 f"{self.name} evaluation server",))
        per_video = {v.name: self._score_video(v, out) for v in dataset.videos}
        objects = [o for scores in per_video.values() for o in scores.values()]
        j, f = (float(np.mean([o[k] for o in objects])) if objects else float("nan") for k in ("J", "F"))
        rows = "".join(f"{name},{obj},{s['J']:.3f},{s['F']:.3f},{(s['J'] + s['F']) / 2:.3f}\n"
                       for name, scores in per_video.items() for obj, s in scores.items())
        return Scored(
            scores={"J&F-Mean": 100 * (j + f) / 2, "J-Mean": 100 * j, "F-Mean": 100 * f},
            details={**details, "per_video": per_video, "n_objects": len(objects)},
            files={"per-object_results.csv": "Video,Object,J,F,J&F\n" + rows})

    def _score_video(self, video: VosVideo, out: Path) -> dict[str, dict[str, float]]:
        """{object id: {"J", "F"}}: DAVIS J and F over the kept frames after the object's first one."""
        names = sorted(video.keep)
        gt = np.stack([read_index_png(video.labels / f"{n}.png") for n in names])  # (T, H, W)
        pred = []
        for n in names:
            path = self.output(out, video) / f"{n}.png"
            if not path.is_file():
                raise _missing_output(self.name, video, path)
            pred.append(read_index_png(path))
        objects = sorted(set(np.unique(gt).tolist()) - {0, 255})
        if not objects:
            return {}
        # davis_scores scores frames 1..T-2 and takes the objects from frame 0: pad with a frame that
        # shows every id, so that all kept frames are scored for every object
        pad = (np.arange(gt[0].size, dtype=np.int64).reshape(gt[0].shape) % (max(objects) + 1)).astype(np.uint8)
        with _naming(self.name, video):
            s = davis_scores(np.concatenate([pad[None], gt, pad[None]]),
                             np.concatenate([np.zeros_like(pad)[None], np.stack(pred), np.zeros_like(pad)[None]]))
        result = {}
        for obj in objects:
            first = int(np.argmax((gt == obj).any(axis=(1, 2))))
            if first + 1 < len(names):
                result[str(obj)] = {"J": float(s["J_per_frame"][obj - 1, first + 1:].mean()),
                                    "F": float(s["F_per_frame"][obj - 1, first + 1:].mean())}
        return result

    def _write_submission(self, dataset: Dataset, out: Path) -> Path:
        """The zip the evaluation server takes, written atomically; returns its path."""
        def write(tmp: str) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for video in dataset.videos:
                    for name in sorted(video.keep):
                        png = self.output(out, video) / f"{name}.png"
                        if not png.is_file():
                            raise _missing_output(self.name, video, png)
                        archive.write(png, f"{self.zip_prefix}{video.name}/{name}.png")

        return write_atomic(out / SUBMISSION_NAME, write)


VOS_BENCHMARKS: dict[str, Benchmark] = {"ytvos": _Vos("ytvos", "Annotations/"), "mose": _Vos("mose", "")}
