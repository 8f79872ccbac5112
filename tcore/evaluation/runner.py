"""The evaluation loop shared by the three benchmarks.

Read the dataset, lock the results folder (one evaluation per folder: rank 0 holds
``<out_dir>/<benchmark>/tcore.lock`` for the whole run, and a second run stops at once naming it),
load the model once, check the results folder's manifest, predict the videos that are not
finished (sharded over the ranks under ``torchrun``), then score every video from the files and
write the CSVs and ``summary.json``. Only rank 0 scores, writes the summary and shows progress
bars; every rank returns the same summary.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch

from ..locks import FolderLock
from .._outputs import check_output_folder, missing_folders, remove_if_empty
from ..devices import resolve_device
from ..distributed import DistInfo, all_gather_objects, broadcast_object, claim_folder, torchrun_env
from ..errors import InvalidInputError, UserError
from .benchmarks import BENCHMARKS as _PAPER_BENCHMARKS
from .benchmarks import RunSettings
from .datasets import BENCHMARK_NAMES, Dataset, DatasetError, read_davis, read_jhmdb, read_vip
from .vos import VOS_BENCHMARKS, read_mose, read_ytvos
from .results import (MANIFEST_NAME, PARTIAL_DIR, SUMMARY_NAME, build_manifest, describe_model, paper_scores,
                      prepare_results_folder, weights_digest, write_json_atomic, write_text_atomic)

__all__ = ["evaluate", "read_dataset", "shard_videos"]

_logger = logging.getLogger(__name__)
_T = TypeVar("_T")
BENCHMARKS = {**_PAPER_BENCHMARKS, **VOS_BENCHMARKS}
_GROUP_TIMEOUT = timedelta(hours=6)  # ranks wait for the slowest rank and for rank 0's scoring
_READERS: dict[str, Callable[..., Dataset]] = {"davis": read_davis, "jhmdb": read_jhmdb, "vip": read_vip}


def read_dataset(benchmark: str, root: str | os.PathLike, list_file: str | os.PathLike | None = None,
                 split: str | None = None) -> Dataset:
    """`read_davis`, `read_jhmdb`, `read_vip`, `read_ytvos` or `read_mose` by name.

    Args:
        benchmark: the benchmark's name.
        root: its dataset folder.
        list_file: the split's video list (see each reader).
        split: YouTube-VOS / MOSE only: the split folder ("valid" by default).

    Raises:
        InvalidInputError: an unknown benchmark name, or `split` for DAVIS, JHMDB or VIP.
    """
    if benchmark in ("ytvos", "mose"):
        return (read_ytvos if benchmark == "ytvos" else read_mose)(root, list_file, split or "valid")
    if benchmark not in _READERS:
        raise InvalidInputError(f"benchmark={benchmark!r}: expected one of {', '.join(BENCHMARK_NAMES)}")
    if split is not None:
        raise InvalidInputError(f"split={split!r}: only ytvos and mose have split folders; {benchmark} takes its "
                                f"split as a list file (--list)")
    return _READERS[benchmark](root, list_file)


def shard_videos(videos: Sequence[_T], rank: int, world_size: int) -> list[_T]:
    """The videos rank `rank` of `world_size` predicts: every world_size-th, from the rank-th.

    Args:
        videos: all videos, in the split's order.
        rank: 0 <= rank < world_size.
        world_size: number of processes.

    Returns:
        `videos[rank::world_size]`; the shards of all ranks partition `videos`.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise InvalidInputError(f"rank={rank}, world_size={world_size}: expected 0 <= rank < world_size")
    return list(videos[rank::world_size])


def _init_distributed() -> tuple[DistInfo, bool]:
    """Join the torchrun job when there is one (WORLD_SIZE > 1), or the process group already set up.

    Returns:
        (where this process sits, with a gloo group for the object exchanges when the default
        group is someone else's; whether this call created the default group, to destroy it after).
    """
    import torch.distributed as dist

    if not dist.is_available():
        return DistInfo(), False
    _, local_rank, world = torchrun_env()
    if dist.is_initialized():
        if dist.get_world_size() == 1:
            return DistInfo(), False
        group = dist.new_group(backend="gloo", timeout=_GROUP_TIMEOUT)
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), group=group), False
    if world <= 1:
        return DistInfo(), False
    # Only small Python objects are exchanged (status, counts, the summary): gloo on the CPU is enough.
    dist.init_process_group(backend="gloo", timeout=_GROUP_TIMEOUT)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size()), True


class _OtherRankFailed(UserError, RuntimeError):
    """Another rank stopped on the user's mistake (its message follows the rank)."""


def _raise_if_any_failed(dist_info: DistInfo, error: BaseException | None) -> None:
    """Collective: every rank raises when one failed (its own error, or a note naming the rank:
    one line when that rank's error is the user's to fix, a bug otherwise)."""
    report = None if error is None else (isinstance(error, UserError), f"{type(error).__name__}: {error}")
    reports = all_gather_objects(report, dist_info)
    if error is not None:
        raise error
    failed = [(rank, r) for rank, r in enumerate(reports) if r is not None]
    if failed:
        rank, (users, message) = failed[0]
        raise (_OtherRankFailed if users else RuntimeError)(f"evaluation failed on rank {rank}: {message}")


def _pick_device(device: str | torch.device | None, dist_info: DistInfo) -> torch.device:
    """The requested device; under torchrun each rank takes its local GPU."""
    picked = resolve_device(device)
    if picked.type == "cuda" and picked.index is None and dist_info.distributed:
        picked = torch.device("cuda", dist_info.local_rank % torch.cuda.device_count())
    return picked


def _check_outside(results: Path, root: Path) -> None:
    """Results are never written into the dataset folder."""
    out, data = results.expanduser().resolve(), root.resolve()
    if out == data or data in out.parents:
        raise InvalidInputError(f"out_dir: {results} is inside the dataset folder {root}; results are never written "
                                f"into the dataset: pick a folder outside it with -o (out_dir=)")


def _protocol(benchmark: str, size: tuple[int, int] | None, precision: str) -> dict[str, Any]:
    from ..propagation.presets import PRESETS

    spec = PRESETS[benchmark]
    return {"preset": spec.name, "size_rule": spec.size_rule, "size": list(spec.size),
            "size_override": None if size is None else [int(s) for s in size],
            "topk": spec.topk, "temperature": spec.temperature, "radius": spec.radius,
            "n_context": spec.n_context, "output_resize": spec.output_resize, "precision": precision}


def _working_sizes(dataset: Dataset, patch_size: int, size: tuple[int, int] | None) -> list[list[int]]:
    """Distinct (H, W) working sizes of the videos (frame headers only)."""
    from ..io import read_video
    from ..propagation.presets import PRESETS, working_size

    spec = PRESETS[dataset.benchmark]
    sizes = {working_size(tuple(read_video(v.frames).size), spec, patch_size, size) for v in dataset.videos}
    return [list(s) for s in sorted(sizes)]


def _split_note(dataset: Dataset) -> str:
    """What a split that is not the paper's is, and how to get the paper's."""
    from .datasets import paper_split

    paper = paper_split(dataset.benchmark)
    shared = len({v.name for v in dataset.videos} & set(paper))
    return (f"split: {len(dataset.videos)} videos from {dataset.split}, {shared} of them among the paper's "
            f"{len(paper)}: not the paper's split; without --list (list_file=) tcore uses the paper's")


def _notes(dataset: Dataset, size: tuple[int, int] | None, precision: str) -> list[str]:
    notes = []
    if not dataset.official_split:
        notes.append(_split_note(dataset) if dataset.benchmark in _PAPER_BENCHMARKS
                     else f"split: {dataset.split} (not the benchmark's validation split)")
    if size is not None:
        notes.append("--size (size=) overrides the paper's working size: not comparable with the paper")
    if precision != "fp32":
        notes.append(f"precision {precision}: not bit-exact (the paper's protocol runs in fp32)")
    if dataset.benchmark in VOS_BENCHMARKS:
        notes.append(f"{dataset.benchmark}: the paper reports no number for it (T-CoRe evaluates DAVIS, JHMDB and "
                     "VIP); the protocol is the paper's DAVIS hyper-parameters at short side 480, aspect kept")
    return notes


def _is_paper_protocol(dataset: Dataset, size: tuple[int, int] | None, precision: str) -> bool:
    """A run the paper's numbers compare with: its benchmark, its split (by content), its size, fp32."""
    return dataset.benchmark in _PAPER_BENCHMARKS and dataset.official_split and size is None and precision == "fp32"


def evaluate(
    benchmark: str,
    root: str | os.PathLike,
    *,
    model: Any = None,
    out_dir: str | os.PathLike,
    list_file: str | os.PathLike | None = None,
    split: str | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    precision: str = "fp32",
    size: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run a benchmark end to end: propagate every video, score, write the results.

    Outputs go to ``<out_dir>/<benchmark>/`` (never into the dataset): per-video predictions
    (DAVIS ``<seq>/<frame>.png`` indexed with the DAVIS palette, JHMDB ``<action>/<clip>.npy``
    (T, 15, 2) pixels with -1 where a joint vanished, VIP ``videos<N>/<frame>.png`` class ids,
    YouTube-VOS / MOSE ``Annotations/<video>/<frame>.png`` and their server's ``submission.zip``), the
    CSV files (DAVIS: the official ``global_results-val.csv`` and ``per-sequence_results-val.csv``),
    ``summary.json`` and ``manifest.json``. A second run with the same model and protocol skips the
    finished videos (and scores them again); a folder made by another model, protocol or tcore
    version is an error unless `overwrite`. Under ``torchrun`` the videos are sharded over the ranks.

    Args:
        benchmark: "davis" (DAVIS-2017 val), "jhmdb" or "vip" (the paper's), "ytvos" (YouTube-VOS
            2018/2019) or "mose" (no paper number; J&F only with ground truth for every frame); the
            preset of the same name is used.
        root: the dataset folder in its official layout (see `tcore.evaluation.datasets` and
            `tcore.evaluation.vos`).
        model: as `propagate_masks`'s `model=` (None: tcore_vits16, Kinetics-400); loaded once.
        out_dir: the results folder.
        list_file: the split. Default: the paper's (DAVIS: the dataset's ImageSets/2017/val.txt,
            else the paper's list; JHMDB, VIP: the paper's lists, shipped with tcore); a list that
            is not the paper's set of videos is noted. YouTube-VOS / MOSE: a subset, one video name per line.
        split: YouTube-VOS / MOSE: the split folder ("valid" by default; "train" has ground truth).
        overwrite: delete this benchmark's outputs in `out_dir` and start again.
        device: None picks CUDA (each rank its local GPU), then MPS, then CPU.
        batch_size: frames per backbone call.
        precision: "fp32" (exact) or "bf16" (opt-in, not the paper's).
        size: (H, W) working size overriding the preset (not the paper's protocol; for quick runs).
        progress: progress bars on stderr (overall and per video).

    Returns:
        The summary (also written to ``summary.json``): "benchmark"; "scores" {column: percent}
        with the paper's columns (J&F-Mean, J-Mean, F-Mean | PCK@0.1, PCK@0.2 | mIoU); "paper" (the
        released model's numbers from the registry, or None); "details" (DAVIS official fractions
        and per-sequence J/F, all PCK alphas per joint and per clip, VIP IoU per class and per
        video); "n_videos", "n_resumed", "n_predicted"; "model", "protocol", "manifest",
        "working_sizes", "split", "official_split" (the set of videos equals the paper's list),
        "paper_protocol" (that split, the preset's size, fp32: comparable with the paper), "notes",
        "out_dir", "files".

    Raises:
        MissingFileError: a missing dataset folder, list file or model.
        DatasetError: a dataset that does not have the official layout.
        ManifestMismatchError: `out_dir` holds another run's outputs (pass overwrite=True).
        FolderLockedError: another live evaluation writes into ``<out_dir>/<benchmark>/`` (one run per
            results folder: rank 0 holds ``tcore.lock`` there, see `tcore.locks`), checked before the
            model is loaded.
        InvalidInputError: bad arguments (a device this machine lacks, an out_dir that is a file), or a
            video the propagation refuses (the message names it).
        FileAccessError: `out_dir` is not writable, or a write fails (a full disk: names the file).
        (Each is a `tcore.errors.UserError`; anything else is a bug.)
    """
    if benchmark not in BENCHMARKS:
        raise InvalidInputError(f"benchmark={benchmark!r}: expected one of {', '.join(BENCHMARK_NAMES)}")
    if precision not in ("fp32", "bf16"):
        raise InvalidInputError(f"precision={precision!r}: expected 'fp32' or 'bf16'")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise InvalidInputError(f"size={size!r}: expected (H, W) in pixels")
    resolve_device(device)  # a device this machine lacks is named before anything is read
    dataset = read_dataset(benchmark, root, list_file, split)
    results = check_output_folder(Path(out_dir).expanduser() / benchmark, "out_dir")
    _check_outside(results, dataset.root)
    created = missing_folders(results)
    dist_info, owns_default_group = _init_distributed()
    lock = None
    try:
        lock = claim_folder(results, "evaluation", dist_info, name="out_dir")
        return _run(dataset, results, dist_info, lock, model=model, overwrite=overwrite, device=device,
                    batch_size=batch_size, precision=precision, size=None if size is None else tuple(size),
                    progress=progress)
    finally:
        if lock is not None:
            lock.release()
            remove_if_empty(created)  # a run that failed before writing leaves no empty folders behind
        if owns_default_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(dataset: Dataset, results: Path, dist_info: DistInfo, lock: FolderLock | None, *, model: Any, overwrite: bool,
         device: str | torch.device | None, batch_size: int, precision: str, size: tuple[int, int] | None,
         progress: bool) -> dict[str, Any]:
    """`evaluate` once the arguments are checked and rank 0 holds the results folder."""
    from ..models import load_backbone

    benchmark, bench = dataset.benchmark, BENCHMARKS[dataset.benchmark]
    torch_device = _pick_device(device, dist_info)
    backbone = load_backbone(model)  # loaded once, on the CPU first to fingerprint its weights
    info = describe_model(model)
    protocol = _protocol(benchmark, size, precision)
    manifest = build_manifest(benchmark, info, backbone, weights_digest(backbone), protocol)
    error = None
    if dist_info.rank == 0:
        try:
            prepare_results_folder(results, manifest, overwrite)
        except Exception as err:  # every rank must learn that rank 0 failed, or the others wait forever
            error = err
    _raise_if_any_failed(dist_info, error)
    backbone.to(torch_device)

    is_main = dist_info.rank == 0
    if is_main and benchmark in _PAPER_BENCHMARKS and not dataset.official_split:
        _logger.warning("%s: NOT the paper's split (%s)", benchmark, _split_note(dataset))
    settings = RunSettings(size, torch_device, batch_size, precision, progress and is_main, f"r{dist_info.rank}")
    counts = _predict_shard(dataset, results, dist_info, lock, backbone, settings)

    summary = None
    if is_main:
        if lock is not None:
            lock.check()
        shutil.rmtree(results / PARTIAL_DIR, ignore_errors=True)
        scored = bench.score(dataset, results, settings)
        for name, text in scored.files.items():
            write_text_atomic(results / name, text)
        summary = {
            "benchmark": benchmark,
            "scores": scored.scores,
            "paper": paper_scores(info, benchmark),
            "details": scored.details,
            "n_videos": len(dataset.videos),
            "n_resumed": sum(c[0] for c in counts),
            "n_predicted": sum(c[1] for c in counts),
            "videos": [v.name for v in dataset.videos],
            "root": str(dataset.root),
            "split": dataset.split,
            "official_split": dataset.official_split,
            "paper_protocol": _is_paper_protocol(dataset, size, precision),
            "model": info,
            "protocol": protocol,
            "working_sizes": _working_sizes(dataset, int(backbone.patch_size), size),
            "notes": _notes(dataset, size, precision) + list(scored.notes),
            "world_size": dist_info.world_size,
            "out_dir": str(results),
            "manifest": json.loads((results / MANIFEST_NAME).read_text()),
            "files": [str(results / n) for n in (*scored.files, SUMMARY_NAME)],
        }
        write_json_atomic(results / SUMMARY_NAME, summary)
        summary = json.loads((results / SUMMARY_NAME).read_text())  # the JSON form: plain lists, NaN -> None
    return broadcast_object(summary, dist_info)


def _predict_shard(dataset: Dataset, results: Path, dist_info: DistInfo, lock: FolderLock | None,
                   backbone: torch.nn.Module, settings: RunSettings) -> list[tuple[int, int]]:
    """Predict this rank's unfinished videos; a collective (every rank raises when one failed).

    Returns:
        (videos resumed, videos predicted) of each rank, by rank.
    """
    from tqdm.auto import tqdm

    benchmark, bench = dataset.benchmark, BENCHMARKS[dataset.benchmark]
    mine = shard_videos(dataset.videos, dist_info.rank, dist_info.world_size)
    todo = [v for v in mine if not bench.is_finished(results, v)]
    if len(todo) < len(mine):
        _logger.info("%s: %d of %d videos already finished in %s; skipped (they are scored again)",
                     benchmark, len(mine) - len(todo), len(mine), results)
    error = None
    try:
        desc = f"{benchmark} videos" + (f" (rank 0's shard of {dist_info.world_size})" if dist_info.distributed else "")
        with tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not settings.progress,
                  desc=desc, unit="video", dynamic_ncols=True) as bar:
            for video in todo:
                if lock is not None:
                    lock.check()  # a run whose folder was taken over (a frozen node) stops writing
                _predict(bench, video, backbone, results, settings)
                bar.update(1)
    except Exception as err:  # every rank must learn that one failed, or the others wait forever
        error = err
    counts = all_gather_objects((len(mine) - len(todo), len(todo)), dist_info)
    _raise_if_any_failed(dist_info, error)  # also a barrier: every rank's outputs are in place now
    return counts


def _predict(bench: Any, video: Any, backbone: torch.nn.Module, results: Path, settings: RunSettings) -> None:
    """Predict one video; a user's error names the video (same class), anything else is a bug."""
    try:
        bench.predict(video, backbone, results, settings)
    except DatasetError:  # already names the video
        raise
    except UserError as err:
        raise type(err)(f"{bench.name} video {video.name!r}: {err}") from err
