"""Prepare training data: decode videos into frame folders, and list frame folders in a manifest.

    python -m training.prepare frames VIDEOS_DIR FRAMES_DIR --num-frames 20 --workers 16
    python -m training.prepare frames VIDEOS_DIR FRAMES_DIR --fps 2 --short-side 256
    python -m training.prepare manifest FRAMES_DIR -o manifest.txt --layout kinetics

`frames` mirrors the folder tree: `VIDEOS_DIR/train/abseiling/x.mp4` becomes
`FRAMES_DIR/train/abseiling/x/00000.jpg ...` (the official Kinetics layout when VIDEOS_DIR holds
`train/<class>/*.mp4`). Each video is written into a hidden `.partial` folder that is renamed when
complete, so an interrupted run is resumed by running the same command again: finished videos
are skipped, partial ones redone. Videos that fail to decode are listed in FRAMES_DIR/failed.txt.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcore.files import write_text_atomic
from training.data import scan_videos, write_manifest

__all__ = ["VIDEO_EXTENSIONS", "select_frames", "extract_frames", "extract_all", "main"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
_logger = logging.getLogger("training.prepare")


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


def _frame_times(path: Path) -> list[float]:
    """Presentation times of every video frame, from the packets (no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
        base = stream.time_base
        rate = stream.average_rate or Fraction(25)
    if not pts:
        return []
    if base is None:
        return [i / float(rate) for i in range(len(pts))]
    return [float((p - min(pts)) * base) for p in sorted(pts)]


def extract_frames(video: Path, out_dir: Path, fps: float | None, num_frames: int | None,
                   short_side: int | None = None, quality: int = 90) -> int:
    """Decode one video into `out_dir/00000.jpg ...` (atomically: a `.partial` folder renamed at the end).

    Returns:
        The number of frames written (0 when `out_dir` already existed).
    """
    import av
    from PIL import Image

    if out_dir.is_dir():
        return 0
    keep = set(select_frames(_frame_times(video), fps, num_frames))
    if not keep:
        raise ValueError(f"{video}: no video frames found")
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    written = 0
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index not in keep:
                continue
            image = frame.to_image()
            if short_side:
                scale = short_side / min(image.size)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.BICUBIC)
            image.save(partial / f"{written:05d}.jpg", quality=quality)
            written += 1
    if written == 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f"{video}: the decoder returned no frame")
    os.replace(partial, out_dir)
    return written


def _job(args: tuple[str, str, float | None, int | None, int | None, int]) -> tuple[str, int, str]:
    video, out, fps, num, short, quality = args
    try:
        return video, extract_frames(Path(video), Path(out), fps, num, short, quality), ""
    except (OSError, ValueError) as err:  # av.error.FFmpegError is an OSError
        return video, 0, f"{type(err).__name__}: {err}"


def extract_all(videos_dir: str | Path, frames_dir: str | Path, fps: float | None = None,
                num_frames: int | None = None, short_side: int | None = None, quality: int = 90,
                workers: int = 8) -> tuple[int, int, list[str]]:
    """Decode every video under `videos_dir` in parallel processes (resumable).

    Returns:
        (videos decoded now, videos skipped as already done, failures "path: error").
    """
    src, dst = Path(videos_dir), Path(frames_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder of videos")
    if (fps is None) == (num_frames is None):
        raise ValueError("give exactly one of --fps and --num-frames")
    videos = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not videos:
        raise FileNotFoundError(f"{src}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    jobs = [(str(v), str(dst / v.relative_to(src).with_suffix("")), fps, num_frames, short_side, quality)
            for v in videos]
    done = skipped = 0
    failures: list[str] = []
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, (video, count, error) in enumerate(pool.map(_job, jobs, chunksize=4), 1):
            if error:
                failures.append(f"{video}: {error}")
            elif count:
                done += 1
            else:
                skipped += 1
            if i % 500 == 0 or i == len(jobs):
                _logger.info("%d/%d videos (%d decoded, %d already done, %d failed)", i, len(jobs), done, skipped,
                             len(failures))
    report = dst / "failed.txt"
    if failures:
        write_text_atomic(report, "\n".join(failures) + "\n")
    else:
        report.unlink(missing_ok=True)
    return done, skipped, failures


def main(argv: list[str] | None = None) -> int:
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
    manifest = sub.add_parser("manifest", help="list the frame folders of a frames root")
    manifest.add_argument("frames_dir")
    manifest.add_argument("-o", "--output", required=True, help="manifest file to write")
    manifest.add_argument("--layout", choices=("kinetics", "folders"), default="kinetics")
    manifest.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "frames":
        done, skipped, failures = extract_all(args.videos_dir, args.frames_dir, args.fps, args.num_frames,
                                              args.short_side, args.quality, args.workers)
        _logger.info("done: %d decoded, %d already done, %d failed%s", done, skipped, len(failures),
                     f" (see {Path(args.frames_dir) / 'failed.txt'})" if failures else "")
        return 1 if failures else 0
    videos = scan_videos(args.frames_dir, args.layout, args.split)
    write_manifest(args.output, videos)
    _logger.info("%d frame folders -> %s", len(videos), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
