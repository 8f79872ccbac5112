"""Prepare training data: decode videos into frame folders, check frame folders before a run, and
list them in a manifest.

    python -m training.prepare frames VIDEOS_DIR FRAMES_DIR --num-frames 20 --workers 16
    python -m training.prepare frames VIDEOS_DIR FRAMES_DIR --fps 2 --short-side 256
    python -m training.prepare check FRAMES_DIR --config training/configs/vits16_k400.yaml
    python -m training.prepare manifest FRAMES_DIR -o manifest.txt --layout kinetics

`frames` mirrors the folder tree: `VIDEOS_DIR/train/abseiling/x.mp4` becomes
`FRAMES_DIR/train/abseiling/x/00000.jpg ...` (the official Kinetics layout when VIDEOS_DIR holds
`train/<class>/*.mp4`). Every video ends as exactly one of:

* done: its frames are written, into a hidden `.<name>.partial` folder renamed when complete;
* already done: its folder exists from an earlier run (a rerun skips it);
* failed: one line `<video>: <reason>` in FRAMES_DIR/failed.txt. The reasons: an empty or
  unreadable file, not a video FFmpeg can read, no video stream, no frame decoded, a decode error
  at frame k, or far fewer frames decoded than the container declares: a video fails when it
  decodes fewer than its declared count minus 10 % of it (minus 2 frames for a short one), e.g. a
  faststart .mp4 cut short whose header still declares every frame (a container that declares no
  count is not checked). A decoder that crashes its process fails that video alone.

No single file stops the run; the summary counts each outcome, and the exit code is 1 when any
video failed. FRAMES_DIR is held by one run at a time (`tcore.locks.FolderLock`), so a run killed
at any moment and started again ends with the same frames folder, byte for byte, as an
uninterrupted one: finished videos are skipped, the interrupted one is redone, failed ones are
tried again; its decoding processes die with it (`training.lifecycle.die_with_parent`), so none
goes on writing. Hidden and `.partial` folders are never videos (`training.videos.scan_videos`).

`check` lists what would spoil a long run: folders with too few frames for sandwich sampling with
the config's windows (or fewer than --min-frames), and frames that do not decode.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

if __package__ in (None, ""):  # run as a script: make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcore.errors import InvalidInputError, MissingFileError, user_error_message
from tcore.files import write_text_atomic
from tcore.locks import FolderLock
from training.lifecycle import die_with_parent
from training.videos import list_frames, sandwich_fits, scan_videos, write_manifest

if TYPE_CHECKING:  # the config imports the model layer (torch): only `check --config` needs it
    from training.config import DataConfig

__all__ = ["VIDEO_EXTENSIONS", "FAILED_NAME", "VideoError", "Prepared", "select_frames", "too_few_decoded",
           "extract_frames", "extract_all", "check_frames", "main"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
FAILED_NAME = "failed.txt"
_logger = logging.getLogger("training.prepare")


class VideoError(InvalidInputError):
    """A video that cannot be turned into frames; the message is the reason written to failed.txt."""


class Prepared(NamedTuple):
    """What `extract_all` did: videos decoded now, skipped as already done, and failures
    ("<video>: <reason>", sorted)."""

    done: int
    skipped: int
    failures: list[str]


def select_frames(times: list[float], fps: float | None = None, num_frames: int | None = None) -> list[int]:
    """Which frames to keep, from the presentation times of all frames of a video.

    Args:
        times: (T,) frame times in seconds, increasing.
        fps: keep the frame nearest to each multiple of 1/fps (each frame at most once).
        num_frames: keep `num_frames` frames at the centres of equal segments of the frame list
            (all frames when the video has fewer).

    Returns:
        Sorted frame indices.
    """
    n = len(times)
    if n == 0:
        return []
    if num_frames is not None:
        if n <= num_frames:
            return list(range(n))
        return [int((k + 0.5) * n / num_frames) for k in range(num_frames)]
    if fps is None or fps <= 0:
        raise ValueError("select_frames: give fps > 0 or num_frames")
    start, chosen, j = times[0], [], 0
    k = 0
    while start + k / fps <= times[-1] + 1e-9:
        target = start + k / fps
        while j + 1 < n and abs(times[j + 1] - target) < abs(times[j] - target):
            j += 1
        if not chosen or chosen[-1] != j:
            chosen.append(j)
        k += 1
    return chosen


def too_few_decoded(decoded: int, declared: int) -> bool:
    """The rule for a cut-short file: fewer frames decoded than the container declares, minus 10 %
    of the declared count (at least 2 frames). A declared count of 0 means unknown: never too few."""
    return declared > 0 and decoded < declared - max(2, declared // 10)


def _reason(err: BaseException) -> str:
    """An FFmpeg / OS error in a few words, without the file name FFmpeg repeats."""
    return getattr(err, "strerror", None) or str(err).strip().splitlines()[0] or type(err).__name__


def _open(path: Path):
    """The opened container and its first video stream.

    Raises:
        VideoError: an empty, unreadable or undecodable file, or no video stream.
    """
    import av

    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except PermissionError as err:
        raise VideoError(f"cannot be read ({_reason(err)})") from err
    except (OSError, ValueError) as err:  # av.error.FFmpegError is both
        raise VideoError(f"not a video file FFmpeg can read ({_reason(err)})") from err
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoError(f"no video stream (streams: {', '.join(kinds)})")
    return container, container.streams.video[0]


def _frame_times(path: Path) -> tuple[list[float], int]:
    """Presentation times of every video packet (no decoding), and the frame count the container declares."""
    container, stream = _open(path)
    with container:
        try:
            pts = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
        except (OSError, ValueError) as err:
            raise VideoError(f"cannot be read to the end ({_reason(err)})") from err
        base, declared = stream.time_base, stream.frames
        rate = stream.average_rate or Fraction(25)
    if not pts:
        return [], declared
    if base is None:
        return [i / float(rate) for i in range(len(pts))], declared
    return [float((p - min(pts)) * base) for p in sorted(pts)], declared


def extract_frames(video: Path, out_dir: Path, fps: float | None, num_frames: int | None,
                   short_side: int | None = None, quality: int = 90) -> int:
    """Decode one video into `out_dir/00000.jpg ...` (atomically: a `.partial` folder renamed at the end).

    Returns:
        The number of frames written (0 when `out_dir` already existed).

    Raises:
        VideoError: the video cannot be turned into frames (the message is the reason).
    """
    from PIL import Image

    if out_dir.is_dir():
        return 0
    times, declared = _frame_times(video)
    keep = set(select_frames(times, fps, num_frames))
    if not keep:
        raise VideoError("no frame decoded (the video stream holds no frame)")
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed run
    partial.mkdir(parents=True)
    try:
        written = decoded = 0
        container, stream = _open(video)
        with container:
            stream.thread_type = "AUTO"
            frames = container.decode(stream)
            while True:
                try:
                    frame = next(frames, None)
                except (OSError, ValueError) as err:
                    raise VideoError(f"decode error at frame {decoded} ({_reason(err)})") from err
                if frame is None:
                    break
                if decoded in keep:
                    image = frame.to_image()
                    if short_side:
                        scale = short_side / min(image.size)
                        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                        image = image.resize(size, Image.Resampling.BICUBIC)
                    image.save(partial / f"{written:05d}.jpg", quality=quality)
                    written += 1
                decoded += 1
        if decoded == 0:
            raise VideoError("no frame decoded")
        if too_few_decoded(decoded, declared):
            raise VideoError(f"far fewer frames decoded than the container declares: {decoded} of {declared} "
                             "(a file cut short?)")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, out_dir)
    return written


_Job = tuple[str, str, "float | None", "int | None", "int | None", int]


def _job(job: _Job) -> tuple[str, int, str]:
    """(video, frames written, "" or the reason it failed): one video, in a worker process."""
    video, out, fps, num, short, quality = job
    try:
        return video, extract_frames(Path(video), Path(out), fps, num, short, quality), ""
    except VideoError as err:
        return video, 0, str(err)
    except OSError as err:  # the frames could not be written, or the video vanished meanwhile
        return video, 0, f"{type(err).__name__}: {err}"


def _alone(job: _Job) -> tuple[str, int, str]:
    """One job in a process of its own: a crash fails this video only."""
    with ProcessPoolExecutor(max_workers=1, initializer=die_with_parent) as pool:
        try:
            return pool.submit(_job, job).result()
        except BrokenProcessPool:
            return job[0], 0, "the decoder crashed (its worker process died)"


def _succeeded(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _results(jobs: list[_Job], workers: int) -> Iterator[tuple[str, int, str]]:
    """Every job's result (video, frames written, reason), in order until a worker process dies (a
    decoder crash); then the jobs that were in flight are redone each in a process of its own, so
    that the crash fails one video, and the rest go to a new pool."""
    todo = jobs
    while todo:
        with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent) as pool:
            futures: list[Future] = [pool.submit(_job, job) for job in todo]
            for i, future in enumerate(futures):
                try:
                    yield future.result()
                except BrokenProcessPool:
                    break
            else:
                return
        rest = list(zip(todo[i:], futures[i:]))
        yield from (future.result() for _, future in rest if _succeeded(future))  # done before the crash
        unfinished = [job for job, future in rest if not _succeeded(future)]
        in_flight = 2 * workers + 1  # the pool hands out at most workers + 1 jobs ahead
        for job in unfinished[:in_flight]:
            yield _alone(job)
        todo = unfinished[in_flight:]


def extract_all(videos_dir: str | Path, frames_dir: str | Path, fps: float | None = None,
                num_frames: int | None = None, short_side: int | None = None, quality: int = 90,
                workers: int = 8) -> Prepared:
    """Decode every video under `videos_dir` in parallel processes (resumable), holding `frames_dir`'s lock.

    Returns:
        The counts of each outcome; failures are also written to `frames_dir/failed.txt` (removed
        when none failed).

    Raises:
        MissingFileError: no such folder, or no video file in it.
        FolderLockedError: another run writes into `frames_dir`.
    """
    src, dst = Path(videos_dir), Path(frames_dir)
    if not src.is_dir():
        raise MissingFileError(f"{src}: no such folder of videos")
    if (fps is None) == (num_frames is None):
        raise InvalidInputError("give exactly one of --fps and --num-frames")
    videos = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir())
    if not videos:
        raise MissingFileError(f"{src}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    jobs = [(str(v), str(dst / v.relative_to(src).with_suffix("")), fps, num_frames, short_side, quality)
            for v in videos]
    done = skipped = 0
    failures: list[str] = []
    with FolderLock(dst, purpose="frame extraction"):
        for i, (video, count, reason) in enumerate(_results(jobs, max(1, workers)), 1):
            if reason:
                failures.append(f"{video}: {reason}")
            elif count:
                done += 1
            else:
                skipped += 1
            if i % 500 == 0 or i == len(jobs):
                _logger.info("%d/%d videos (%d decoded, %d already done, %d failed)", i, len(jobs), done, skipped,
                             len(failures))
        report = dst / FAILED_NAME
        if failures:
            write_text_atomic(report, "".join(f + "\n" for f in sorted(failures)))
        else:
            report.unlink(missing_ok=True)
    return Prepared(done, skipped, sorted(failures))


def _undecodable(folder: str) -> list[str]:
    """"<frame>: <reason>" for every frame of `folder` that PIL cannot decode (in a worker process)."""
    from PIL import Image

    bad = []
    for name in list_frames(folder):
        try:
            with Image.open(Path(folder) / name) as image:
                image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            bad.append(f"{Path(folder) / name}: does not decode ({err})")
    return bad


def check_frames(frames_dir: str | Path, layout: str = "kinetics", split: str = "train",
                 data: DataConfig | None = None, min_frames: int = 0, workers: int = 8) -> tuple[int, list[str]]:
    """What would spoil a run on `frames_dir`: folders with too few frames, frames that do not decode.

    Args:
        frames_dir: the frames root (`data.root`).
        layout, split: as data.layout and data.split.
        data: the run's data config, whose windows decide the frames sandwich sampling needs
            (`training.videos.sandwich_fits`); the recipe's windows if None.
        min_frames: also report folders with fewer frames than this.
        workers: processes decoding the frames.

    Returns:
        (videos checked, one line per problem: folders first, then frames).
    """
    windows = () if data is None else (data.current_range, data.past_offset_range, data.future_offset_range)
    root = Path(frames_dir)
    videos = scan_videos(root, layout, split)
    problems = []
    for video in videos:
        count = len(list_frames(root / video))
        if count < min_frames:
            problems.append(f"{root / video}: {count} frames, fewer than --min-frames {min_frames}")
        elif not sandwich_fits(count, *windows):
            problems.append(f"{root / video}: {count} frames, too few for sandwich sampling with these windows "
                            "(every sample would be one frame three times)")
    with ProcessPoolExecutor(max_workers=max(1, workers), initializer=die_with_parent) as pool:
        for bad in pool.map(_undecodable, [str(root / v) for v in videos], chunksize=16):
            problems.extend(bad)
    return len(videos), problems


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="training.prepare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    frames = sub.add_parser("frames", help="decode videos into frame folders (PyAV, parallel, resumable)")
    frames.add_argument("videos_dir")
    frames.add_argument("frames_dir")
    rate = frames.add_mutually_exclusive_group(required=True)
    rate.add_argument("--fps", type=float, help="frames per second to keep")
    rate.add_argument("--num-frames", type=int, help="frames per video (the official layout has 20)")
    frames.add_argument("--short-side", type=int, default=None, help="resize so the short side has this size")
    frames.add_argument("--quality", type=int, default=90, help="JPEG quality")
    frames.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    check = sub.add_parser("check", help="list folders with too few frames and frames that do not decode")
    check.add_argument("frames_dir")
    check.add_argument("--config", help="the run's YAML config (its data.* windows, layout and split)")
    check.add_argument("--layout", choices=("kinetics", "folders"), help="default: the config's, else kinetics")
    check.add_argument("--split", help="default: the config's, else train")
    check.add_argument("--min-frames", type=int, default=0, help="also list folders with fewer frames")
    check.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    manifest = sub.add_parser("manifest", help="list the frame folders of a frames root")
    manifest.add_argument("frames_dir")
    manifest.add_argument("-o", "--output", required=True, help="manifest file to write")
    manifest.add_argument("--layout", choices=("kinetics", "folders"), default="kinetics")
    manifest.add_argument("--split", default="train")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "frames":
        done, skipped, failures = extract_all(args.videos_dir, args.frames_dir, args.fps, args.num_frames,
                                              args.short_side, args.quality, args.workers)
        where = f" (reasons in {Path(args.frames_dir) / FAILED_NAME})" if failures else ""
        print(f"{done + skipped + len(failures)} videos: {done} done, {skipped} already done, "
              f"{len(failures)} failed{where}", flush=True)
        return 1 if failures else 0
    if args.command == "check":
        data = None
        if args.config:
            from training.config import load_config

            data = load_config(args.config).data
        layout = args.layout or (data.layout if data else "kinetics")
        split = args.split or (data.split if data else "train")
        checked, problems = check_frames(args.frames_dir, layout, split, data, args.min_frames, args.workers)
        for line in problems:
            print(line)
        print(f"{checked} videos checked: {len(problems)} problems", flush=True)
        return 1 if problems else 0
    videos = scan_videos(args.frames_dir, args.layout, args.split)
    write_manifest(args.output, videos)
    _logger.info("%d frame folders -> %s", len(videos), args.output)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m training.prepare`: 0 when every video (or folder) is fine, 1 otherwise or on a user's
    mistake (`training.prepare: error: <message>`)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        return _run(args)
    except Exception as err:
        message = user_error_message(err)
        if message is None:
            raise
        print(f"training.prepare: error: {message}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
