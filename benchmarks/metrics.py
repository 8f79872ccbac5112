"""Speed of `tcore.metrics.davis_scores` against a direct per-frame implementation of the official
DAVIS-2017 algorithm (the official loop: per object and frame, `_seg2bmap`, a dilation by disk(r) of
each boundary map, then counts), on a DAVIS-val-sized synthetic run, and a check that both agree.

    python benchmarks/metrics.py                      # 2,000 frames of 854x480, 3 objects
    python benchmarks/metrics.py --frames 200 --device cuda

The synthetic sequences are 67 frames long (the DAVIS-2017 val average) with moving blob objects
(unions of rotating ellipses); the prediction is the ground truth with each ellipse jittered by a
few pixels, and an object occasionally dropped. The direct implementation dilates with OpenCV when it
is installed (as the official code), else with a numpy disk dilation.
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import time
from dataclasses import dataclass

import numpy as np

from tcore.metrics import davis_boundary_radius, davis_scores

try:
    import cv2
except ImportError:  # the benchmark then dilates with numpy
    cv2 = None


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
# the official algorithm, frame by frame


def _seg2bmap(mask: np.ndarray) -> np.ndarray:
    east, south, south_east = np.zeros_like(mask), np.zeros_like(mask), np.zeros_like(mask)
    east[:, :-1], south[:-1, :], south_east[:-1, :-1] = mask[:, 1:], mask[1:, :], mask[1:, 1:]
    b = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
    b[-1, :] = mask[-1, :] ^ east[-1, :]
    b[:, -1] = mask[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2 <= radius * radius).astype(np.uint8)


def _dilate(b: np.ndarray, disk: np.ndarray) -> np.ndarray:
    if cv2 is not None:
        return cv2.dilate(b.astype(np.uint8), disk) > 0
    radius = disk.shape[0] // 2
    height, width = b.shape
    padded = np.zeros((height + 2 * radius, width + 2 * radius), bool)
    padded[radius:radius + height, radius:radius + width] = b
    out = np.zeros_like(b)
    for dy, dx in zip(*np.nonzero(disk)):
        out |= padded[dy:dy + height, dx:dx + width]
    return out


def _f_measure(pred: np.ndarray, gt: np.ndarray, disk: np.ndarray) -> float:
    bp, bg = _seg2bmap(pred), _seg2bmap(gt)
    n_pred, n_gt = bp.sum(), bg.sum()
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    precision = np.sum(bp & _dilate(bg, disk)) / float(n_pred)
    recall = np.sum(bg & _dilate(bp, disk)) / float(n_gt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def direct_scores(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F, (K, T-2) each, one object and one frame at a time."""
    n_obj, frames = int(gt[0].max()), gt.shape[0]
    disk = _disk(davis_boundary_radius(*gt.shape[1:]))
    j, f = np.zeros((n_obj, frames - 2)), np.zeros((n_obj, frames - 2))
    for k in range(n_obj):
        for t in range(1, frames - 1):
            g, p = gt[t] == k + 1, pred[t] == k + 1
            union = np.sum(g | p)
            j[k, t - 1] = 1.0 if union == 0 else np.sum(g & p) / union
            f[k, t - 1] = _f_measure(p, g, disk)
    return j, f


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
        j, f = direct_scores(gt, pred)
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
