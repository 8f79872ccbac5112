"""One evaluation per benchmark: predict a video with its preset, and score all videos from files.

Each benchmark only converts: it calls the propagation front end with the paper's preset
(`iter_masks(preset="davis")`, `propagate_keypoints(preset="jhmdb")`, `iter_masks(preset="vip")`,
the streaming form of `propagate_parts`) and the metrics of `tcore.metrics`. A video's outputs are written
to a temporary place and renamed into the results folder when complete, so an output that exists
is a finished one. Scoring always reads the files, so resumed and freshly predicted videos are
scored alike (and, under torchrun, rank 0 scores what every rank wrote).
"""
from __future__ import annotations

import abc
import contextlib
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from ..metrics import (DAVIS_GLOBAL_COLUMNS, PCK_ALPHAS, VIP_CLASSES, MIoUAccumulator, PCKAccumulator,
                       davis_scores, davis_summary, format_davis_csv, pck)
from .datasets import Dataset, DatasetError, Video, davis_ground_truth, frame_names, jhmdb_ground_truth, read_index_png
from .results import PARTIAL_DIR

__all__ = ["BENCHMARKS", "Benchmark", "RunSettings"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    """How videos are predicted and scored (not part of the protocol, except `size` and `precision`).

    Attributes:
        size: (H, W) working size overriding the preset's rule, or None (the paper's).
        device: where the backbone, the propagation and (on CUDA) the DAVIS metric run.
        batch_size: frames per backbone call.
        precision: "fp32" (exact) or "bf16".
        progress: show the per-video progress bar (stderr).
        tag: a name for this process's temporary outputs (unique per rank).
    """

    size: tuple[int, int] | None
    device: torch.device
    batch_size: int
    precision: str
    progress: bool
    tag: str = "r0"


@dataclass(frozen=True)
class Scored:
    """A benchmark's scores.

    Attributes:
        scores: the paper's columns, in percent (empty when there is no ground truth to score).
        details: everything else, JSON-able (official fractions, per video, per class/joint).
        files: {file name: text} of the CSV files to write.
        notes: what the reader of the results must know (e.g. "predictions only").
    """

    scores: dict[str, float]
    details: dict[str, Any]
    files: dict[str, str]
    notes: tuple[str, ...] = ()


def _partial(out: Path, video: Video, settings: RunSettings, suffix: str = "") -> Path:
    """A fresh temporary path for a video's outputs, inside the results folder (same filesystem)."""
    path = out / PARTIAL_DIR / f"{video.name.replace('/', '__')}.{settings.tag}.{os.getpid()}{suffix}"
    if path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _publish(tmp: Path, target: Path) -> None:
    """Rename complete outputs into place (replacing an incomplete leftover)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _missing_output(benchmark: str, video: Video, path: Path) -> DatasetError:
    return DatasetError(f"{benchmark} video {video.name!r}: no output {path}; the run did not finish it "
                        f"(run the evaluation again to predict it)")


@contextlib.contextmanager
def _naming(benchmark: str, video: Video) -> Iterator[None]:
    """A metric's refusal (ground truth it cannot score, e.g. an object missing from DAVIS frame 0)
    is a `DatasetError` that names the video."""
    try:
        yield
    except ValueError as err:
        raise DatasetError(f"{benchmark} video {video.name!r}: {err}") from err


def _bar(iterable: Iterable, total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, disable=not enabled, desc=desc, unit="video", dynamic_ncols=True, leave=False)


class Benchmark(abc.ABC):
    """Interface of the three benchmarks.

    Attributes:
        name: "davis", "jhmdb" or "vip"; also the preset used.
    """

    name: str

    def output(self, out: Path, video: Video) -> Path:
        """Where a video's outputs live in the results folder."""
        return out / video.name

    def is_finished(self, out: Path, video: Video) -> bool:
        """True when all of a video's outputs exist."""
        target = self.output(out, video)
        return target.is_dir() and all((target / f"{n}.png").is_file() for n in frame_names(video.frames))

    @abc.abstractmethod
    def predict(self, video: Video, backbone: torch.nn.Module, out: Path, settings: RunSettings) -> None:
        """Propagate one video and write its outputs (atomically)."""

    @abc.abstractmethod
    def score(self, dataset: Dataset, out: Path, settings: RunSettings) -> Scored:
        """Score every video of `dataset` from the files in `out`."""

    def _front_end_kwargs(self, backbone: torch.nn.Module, settings: RunSettings) -> dict[str, Any]:
        return dict(model=backbone, preset=self.name, size=settings.size, device=settings.device,
                    batch_size=settings.batch_size, precision=settings.precision, progress=settings.progress)


# ---------------------------------------------------------------------------------------- DAVIS


class _Davis(Benchmark):
    name = "davis"

    def predict(self, video: Video, backbone: torch.nn.Module, out: Path, settings: RunSettings) -> None:
        from ..io import DAVIS_PALETTE, read_video, write_masks
        from ..propagation import iter_masks

        frames = read_video(video.frames)
        first = video.labels / f"{frames.names[0]}.png"
        stream = iter_masks(frames, first, **self._front_end_kwargs(backbone, settings))
        tmp = _partial(out, video, settings)
        write_masks(tmp, stream, palette=DAVIS_PALETTE, names=frames.names)
        _publish(tmp, self.output(out, video))

    def score(self, dataset: Dataset, out: Path, settings: RunSettings) -> Scored:
        metric_device = settings.device if settings.device.type == "cuda" else None
        per_sequence = {}
        for video in _bar(dataset.videos, len(dataset.videos), settings.progress, "scoring davis"):
            names = frame_names(video.frames)
            if len(names) < 3:
                raise DatasetError(f"davis video {video.name!r}: {len(names)} frames; DAVIS scores frames "
                                   f"1..T-2, so a sequence needs at least 3")
            gt = davis_ground_truth(video, names)  # (T, H, W) palette indices, 255 void
            pred = np.stack([_read_output(self, out, video, n) for n in names])
            with _naming(self.name, video):
                per_sequence[video.name] = davis_scores(gt, pred, device=metric_device)
        summary = davis_summary(per_sequence)
        global_csv, sequence_csv = format_davis_csv(summary)
        n_objects = sum(s["n_objects"] for s in per_sequence.values())
        return Scored(
            scores={"J&F-Mean": 100 * summary["J&F-Mean"], "J-Mean": 100 * summary["J-Mean"],
                    "F-Mean": 100 * summary["F-Mean"]},
            details={"global": {c: summary[c] for c in DAVIS_GLOBAL_COLUMNS},
                     "per_sequence": {name: {"J": s["J"], "F": s["F"], "JF": s["JF"], "n_objects": s["n_objects"]}
                                      for name, s in per_sequence.items()},
                     "n_objects": n_objects},
            files={"global_results-val.csv": global_csv, "per-sequence_results-val.csv": sequence_csv})


def _read_output(bench: Benchmark, out: Path, video: Video, name: str) -> np.ndarray:
    path = bench.output(out, video) / f"{name}.png"
    if not path.is_file():
        raise _missing_output(bench.name, video, path)
    return read_index_png(path)


# ---------------------------------------------------------------------------------------- JHMDB


class _Jhmdb(Benchmark):
    name = "jhmdb"

    def output(self, out: Path, video: Video) -> Path:
        return out / f"{video.name}.npy"

    def is_finished(self, out: Path, video: Video) -> bool:
        return self.output(out, video).is_file()

    def predict(self, video: Video, backbone: torch.nn.Module, out: Path, settings: RunSettings) -> None:
        from ..io import read_video
        from ..propagation import propagate_keypoints

        gt = jhmdb_ground_truth(video)  # (T, 15, 2) pixels, 0-based
        frames = read_video(video.frames)
        if len(frames) < len(gt):
            raise DatasetError(f"jhmdb clip {video.name!r}: {len(frames)} frames in {video.frames} but "
                               f"{len(gt)} annotated in {video.labels}")
        if len(frames) > len(gt):
            _logger.warning("jhmdb clip %s: %d frames but %d annotated; the first %d are used", video.name,
                            len(frames), len(gt), len(gt))
            frames = frames[:len(gt)]
        keypoints, _ = propagate_keypoints(frames, gt[0], **self._front_end_kwargs(backbone, settings))
        tmp = _partial(out, video, settings, ".npy")
        np.save(tmp, keypoints.astype(np.float32))  # (T, 15, 2) pixels, -1 where the joint vanished
        _publish(tmp, self.output(out, video))

    def score(self, dataset: Dataset, out: Path, settings: RunSettings) -> Scored:
        total = PCKAccumulator()  # the reference's rule: joints whose prediction vanished are dropped
        strict = PCKAccumulator(visibility="ground_truth")  # they count as misses (reported in details)
        per_clip: dict[str, dict[str, float]] = {}
        for video in _bar(dataset.videos, len(dataset.videos), settings.progress, "scoring jhmdb"):
            gt = jhmdb_ground_truth(video)
            path = self.output(out, video)
            if not path.is_file():
                raise _missing_output(self.name, video, path)
            pred = np.load(path, allow_pickle=False)
            if pred.shape != gt.shape:
                raise DatasetError(f"jhmdb clip {video.name!r}: prediction {path} has shape {pred.shape} but the "
                                   f"ground truth {gt.shape}; delete it and run again")
            total.update(gt, pred)
            strict.update(gt, pred)
            try:
                clip = pck(gt, pred)["PCK"]
            except ValueError:  # no joint visible in frames 1..T-1 of this clip
                clip = {a: math.nan for a in PCK_ALPHAS}
            per_clip[video.name] = {f"PCK@{a}": v for a, v in clip.items()}
        result = total.result()
        header = ",".join(f"PCK@{a}" for a in PCK_ALPHAS)
        clip_rows = "".join(f"{name}," + ",".join(f"{v:.3f}" for v in row.values()) + "\n"
                            for name, row in per_clip.items())
        return Scored(
            scores={"PCK@0.1": result["PCK"][0.1], "PCK@0.2": result["PCK"][0.2]},
            details={"PCK": {f"PCK@{a}": v for a, v in result["PCK"].items()},
                     "PCK_per_joint": {f"PCK@{a}": v for a, v in result["PCK_per_joint"].items()},
                     "n_per_joint": result["n_per_joint"], "per_clip": per_clip,
                     "PCK_vanished_as_misses": {f"PCK@{a}": v for a, v in strict.result()["PCK"].items()}},
            files={"global_results.csv": header + "\n" + ",".join(f"{v:.3f}" for v in result["PCK"].values()) + "\n",
                   "per-clip_results.csv": "Clip," + header + "\n" + clip_rows})


# ------------------------------------------------------------------------------------------ VIP


class _Vip(Benchmark):
    name = "vip"

    def predict(self, video: Video, backbone: torch.nn.Module, out: Path, settings: RunSettings) -> None:
        from ..io import DAVIS_PALETTE, read_video, write_masks
        from ..propagation import iter_masks

        frames = read_video(video.frames)
        first = read_index_png(video.labels / f"{frames.names[0]}.png")  # (H, W) class ids
        stream = iter_masks(frames, first, **self._front_end_kwargs(backbone, settings))  # preset "vip": parts
        tmp = _partial(out, video, settings)
        write_masks(tmp, stream, palette=DAVIS_PALETTE, names=frames.names)
        _publish(tmp, self.output(out, video))

    def score(self, dataset: Dataset, out: Path, settings: RunSettings) -> Scored:
        from PIL import Image

        total = MIoUAccumulator(len(VIP_CLASSES))
        per_video = {}
        for video in _bar(dataset.videos, len(dataset.videos), settings.progress, "scoring vip"):
            one = MIoUAccumulator(len(VIP_CLASSES))
            for name in frame_names(video.frames):  # every frame, frame 0 included (the protocol)
                gt = read_index_png(video.labels / f"{name}.png")
                pred = _read_output(self, out, video, name)
                if pred.shape != gt.shape:  # as the official evaluator: PIL NEAREST to the GT size
                    pred = np.asarray(Image.fromarray(pred).resize(gt.shape[::-1], Image.NEAREST))
                with _naming(self.name, video):
                    total.update(gt, pred)
                    one.update(gt, pred)
            per_video[video.name] = 100 * one.result()["mIoU"]
        result = total.result()
        iou = {c: 100 * v for c, v in zip(VIP_CLASSES, result["IoU"])}
        return Scored(
            scores={"mIoU": 100 * result["mIoU"]},
            details={"IoU": iou, "pixel_accuracy": 100 * result["pixel_accuracy"],
                     "mean_accuracy": 100 * result["mean_accuracy"], "per_video_mIoU": per_video},
            files={"global_results.csv": "mIoU," + ",".join(VIP_CLASSES) + "\n"
                   + ",".join(f"{v:.3f}" for v in [100 * result["mIoU"], *iou.values()]) + "\n",
                   "per-video_results.csv": "Video,mIoU\n" + "".join(f"{n},{v:.3f}\n" for n, v in per_video.items())})


BENCHMARKS: dict[str, Benchmark] = {"davis": _Davis(), "jhmdb": _Jhmdb(), "vip": _Vip()}
