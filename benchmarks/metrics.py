"""Speed of `tcore.metrics.davis_scores` against a direct per-frame implementation of the official
DAVIS-2017 algorithm (the official loop: per object and frame, `_seg2bmap`, a dilation by disk(r) of
each boundary map, then counts), on a DAVIS-val-sized synthetic run, and a check that both agree.

    python benchmarks/metrics.py                      # 2,000 frames of 854x480, 3 objects
    python benchmarks/metrics.py --frames 200 --device cuda

The synthetic sequences are 67 frames long (the DAVIS-2017 val average) with moving blob objects
(unions of rotating ellipses); the prediction is the ground truth with each ellipse jittered by a
few pixels, and an object occasionally dropped. The direct implementation is the tests' oracle
(`benchmarks/oracles.py`: it dilates with OpenCV when it is installed, as the official code, else with a
numpy disk dilation).
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import time
from dataclasses import dataclass

import numpy as np

from oracles import cv2, official_davis_per_frame

from tcore.metrics import davis_scores


# --------------------------------------------------------------------------------------------------
# synthetic data


def make_sequence(rng: np.random.Generator, frames: int, height: int, width: int,
                  objects: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic sequence: (T, H, W) uint8 ground-truth ids and perturbed predicted ids."""
    gt = np.zeros((frames, height, width), np.uint8)
    pred = np.zeros_like(gt)
    size = min(height, width)
    start = rng.uniform([0.3 * height, 0.3 * width], [0.7 * height, 0.7 * width], (objects, 2))
    velocity = rng.normal(0.0, 1.5, (objects, 2))
    offsets = rng.normal(0.0, 0.08 * size, (objects, 3, 2))
    axes = rng.uniform(0.05 * size, 0.2 * size, (objects, 3, 2))
    angles = rng.uniform(0.0, np.pi, (objects, 3))
    spin = rng.normal(0.0, 0.02, (objects, 3))
    for t in range(frames):
        for k in range(objects):
            dropped = rng.random() < 0.02
            for e in range(3):
                cy, cx = start[k] + velocity[k] * t + offsets[k, e]
                a, b = axes[k, e]
                angle = angles[k, e] + spin[k, e] * t
                _fill_ellipse(gt[t], k + 1, cy, cx, a, b, angle)
                if not dropped:
                    jy, jx = rng.normal(0.0, 2.0, 2)
                    sa, sb = 1.0 + rng.normal(0.0, 0.04, 2)
                    _fill_ellipse(pred[t], k + 1, cy + jy, cx + jx, a * sa, b * sb,
                                  angle + rng.normal(0.0, 0.05))
    return gt, pred


def _fill_ellipse(image: np.ndarray, value: int, cy: float, cx: float, a: float, b: float,
                  angle: float) -> None:
    height, width = image.shape
    reach = max(a, b)
    y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 2)
    if y0 >= y1 or x0 >= x1:
        return
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u, v = (dy * cos + dx * sin) / np.float32(a), (dx * cos - dy * sin) / np.float32(b)
    image[y0:y1, x0:x1][u * u + v * v <= 1] = value


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class Timing:
    name: str
    seconds: float = 0.0
    agree: bool = True


def run(frames: int = 2000, height: int = 480, width: int = 854, objects: int = 3, seq_len: int = 67,
        seed: int = 0, device: str | None = None) -> tuple[list[Timing], int]:
    """Time both implementations on the same synthetic sequences; returns (timings, frames scored).

    The first timing is the direct implementation, then `davis_scores` on the CPU, then (with
    `device`) `davis_scores` with torch on that device. `agree` says whether every per-frame J and
    F value equals the direct implementation's exactly.
    """
    rng = np.random.default_rng(seed)
    timings = [Timing("direct per-frame (official algorithm, "
                      + ("cv2.dilate)" if cv2 is not None else "numpy dilation)")),
               Timing("tcore davis_scores (numpy, CPU)")]
    if device is not None:
        timings.append(Timing(f"tcore davis_scores (torch, {device})"))
        davis_scores(*make_sequence(rng, 3, height, width, objects), device=device)  # warm-up
    scored = 0
    for start in range(0, frames, seq_len):
        gt, pred = make_sequence(rng, min(seq_len, frames - start), height, width, objects)
        if len(gt) < 3:
            break
        scored += len(gt) - 2
        t0 = time.perf_counter()
        j, f = official_davis_per_frame(gt, pred)
        timings[0].seconds += time.perf_counter() - t0
        for timing, dev in zip(timings[1:], (None, device)):
            t0 = time.perf_counter()
            s = davis_scores(gt, pred, device=dev)
            timing.seconds += time.perf_counter() - t0
            timing.agree &= np.array_equal(s["J_per_frame"], j) and np.array_equal(s["F_per_frame"], f)
    return timings, scored


def format_table(timings: list[Timing], scored: int) -> str:
    base = timings[0].seconds
    lines = ["| implementation | time (s) | frames/s | speed-up | same J, F |", "|---|---:|---:|---:|---|"]
    for t in timings:
        lines.append(f"| {t.name} | {t.seconds:.2f} | {scored / t.seconds:.0f} | "
                     f"{base / t.seconds:.1f}x | {'yes' if t.agree else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="total frames (DAVIS-2017 val: 1,999)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--objects", type=int, default=3, help="objects per sequence")
    parser.add_argument("--seq-len", type=int, default=67, help="frames per sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="also time the torch path on this device")
    args = parser.parse_args(argv)
    timings, scored = run(args.frames, args.height, args.width, args.objects, args.seq_len, args.seed,
                          args.device)
    print(f"DAVIS J&F: {scored} scored frames of {args.width}x{args.height}, {args.objects} objects, "
          f"sequences of {args.seq_len} frames; {platform.processor() or platform.machine()}, "
          f"{datetime.date.today()}")
    print(format_table(timings, scored))
    return 0 if all(t.agree for t in timings) else 1


if __name__ == "__main__":
    raise SystemExit(main())
