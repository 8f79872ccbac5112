"""A correction in a PropagationSession against a fresh propagate_masks (a harness that prints
tables; not a test).

On a real DAVIS clip (shared data: 40 frames of `car-shadow` by default) at the davis preset, with
the ground-truth masks of frame 0 and of the middle frame:

* ``speed``: one fresh `propagate_masks(video, {0: m0, k: mk})`, then a session that propagates
  `{0: m0}` and is corrected at frame k: the time of the correction (`add_mask(k)` + its stream)
  against the fresh run (goal: at most 0.35x), and whether every mask agrees, pixel for pixel.
* ``corrections``: what a ground-truth correction at the middle frame k does to J&F over the
  frames after it (k+1 .. T-2), per clip, with the rule for later masks (their cover at the grid)
  and with the paper's first-frame sample in its place (the rule before, `--part corrections`
  patches it in); DINOv2 ViT-S/14 at half the davis preset's size. Plus objects that enter late:
  `bmx-trees` object 2 given at frame 10 (IoU with a run that had it at frame 0, frames 11-24),
  and generated clips (`tcore.demo`) with object 2 hidden before frame 12, then given. Each clip
  is encoded once, in a session that is `reset` between cases (its masks are fresh runs' masks).
* ``memory``: the peak CPU memory of the same session (first run + correction), in a fresh process
  each, with the default cache budget (no spill) and with a budget that spills the features to
  disk; the memory malloc has in use, sampled every millisecond, over its value once the model
  is loaded.

The model is the T-CoRe ViT-S/16 architecture with random weights (`--model vits16-random`, the
released weights' speed) or the shared DINOv2 ViT-S/14 weights (`--model dinov2`).

Usage::

    python benchmarks/session.py --clip car-shadow --frames 40 --threads 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import tcore

from propagation import _heap_probe, _PeakSampler, format_table  # the neighbouring harness (a script's folder is on its path)

SHARED = Path(os.environ.get("TCORE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DINOV2 = SHARED / "weights" / "dinov2_vits14_imgfocus.safetensors"


def load_model(name: str) -> torch.nn.Module:
    if name == "dinov2":
        return tcore.load_backbone(DINOV2)
    torch.manual_seed(0)
    return tcore.tcore_vits16(pretrained=False)


def clip(name: str, frames: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(frames, ground-truth ids (T, H, W)) of a shared DAVIS clip, its first `frames` frames."""
    from PIL import Image

    root = SHARED / "data" / "davis"
    video = tcore.read_video(root / "JPEGImages" / "480p" / name)
    gt = np.stack([np.array(Image.open(p)) for p in sorted((root / "Annotations" / "480p" / name).glob("*.png"))])
    return [video[t] for t in range(frames)], gt[:frames]


def bench_speed(args: argparse.Namespace) -> list[dict]:
    model = load_model(args.model)
    frames, gt = clip(args.clip, args.frames)
    k = args.frames // 2
    options = {"model": model, "preset": "davis", "progress": False}
    tcore.propagate_masks(frames[:2], gt[0], **options)  # warm-up: thread pools, allocator
    start = time.perf_counter()
    fresh = tcore.propagate_masks(frames, {0: gt[0], k: gt[k]}, **options)
    t_fresh = time.perf_counter() - start
    with tcore.PropagationSession(frames, **options) as session:
        start = time.perf_counter()
        session.add_mask(0, gt[0])
        first = dict(session.propagate())
        t_first = time.perf_counter() - start
        start = time.perf_counter()
        session.add_mask(k, gt[k])
        corrected = dict(session.propagate())
        t_correction = time.perf_counter() - start
    agree = sorted(corrected) == list(range(k, args.frames)) and all(
        np.array_equal(fresh[t], corrected[t] if t >= k else first[t]) for t in range(args.frames))
    row = {"clip": f"{args.clip} {args.frames} fr", "model": args.model, "correction at": k}
    return [
        {**row, "run": "fresh propagate_masks({0, k})", "s": round(t_fresh, 2), "vs fresh": "1.00x", "masks": ""},
        {**row, "run": "session: first propagate({0})", "s": round(t_first, 2),
         "vs fresh": f"{t_first / t_fresh:.2f}x", "masks": ""},
        {**row, "run": "session: add_mask(k) + propagate", "s": round(t_correction, 2),
         "vs fresh": f"{t_correction / t_fresh:.2f}x", "masks": "identical" if agree else "DIFFER"},
    ]


def session_memory(model: str, clip_name: str, frames: int, cache_bytes: int) -> dict:
    """Peak memory growth of a session's first run and correction (run in a child process)."""
    net = load_model(model)
    video, gt = clip(clip_name, frames)
    k = frames // 2
    probe, name = _heap_probe()
    before = probe()
    start, sampler = time.perf_counter(), _PeakSampler(probe)
    with sampler, tcore.PropagationSession(
            video, model=net, preset="davis", progress=False, cache_bytes=cache_bytes) as session:
        session.add_mask(0, gt[0])
        for _ in session.propagate():
            pass
        corrected = time.perf_counter()
        session.add_mask(k, gt[k])
        for _ in session.propagate():
            pass
        held, spilled = session.nbytes, session.spilled_nbytes
    seconds, correction = time.perf_counter() - start, time.perf_counter() - corrected
    return {"cache_bytes MiB": round(cache_bytes / 2**20), "peak MiB": round((sampler.peak - before) / 2**20, 1),
            "held MiB": round(held / 2**20, 1), "spilled MiB": round(spilled / 2**20, 1),
            "total s": round(seconds, 2), "correction s": round(correction, 2), "measure": f"peak {name} growth"}


def bench_memory(args: argparse.Namespace) -> list[dict]:
    """`session_memory` without and with a spill, each in a fresh process (a clean heap each)."""
    rows = []
    for cache_bytes in (tcore.propagation.session.DEFAULT_CACHE_BYTES, args.spill_budget_mib * 2**20):
        spec = json.dumps([args.model, args.clip, args.frames, cache_bytes])
        code = ("import json, sys; sys.path.insert(0, {here!r}); from session import session_memory; "
                "print(json.dumps(session_memory(*json.loads(sys.argv[1]))))").format(
                    here=os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def bench_corrections(args: argparse.Namespace) -> list[dict]:
    """J&F after a ground-truth correction, with the cover rule and with the centre sample."""
    from contextlib import contextmanager

    from tcore.demo import make_demo_clip
    from tcore.metrics import davis_scores
    from tcore.propagation import api, labels

    @contextmanager
    def later_sample(name: str):
        api.soft_cover_at_grid = labels.soft_onehot_at_grid if name == "centre" else labels.soft_cover_at_grid
        try:
            yield
        finally:
            api.soft_cover_at_grid = labels.soft_cover_at_grid

    model, half = load_model("dinov2"), (240, 440)
    options = {"model": model, "preset": "davis", "size": half, "progress": False}

    def jf(gt: np.ndarray, pred: np.ndarray) -> float:
        return float(np.mean(davis_scores(gt, pred)["JF"]))

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / max(1, (a | b).sum()))

    def masks_of(session: tcore.PropagationSession, given: dict, sample: str) -> np.ndarray:
        """(T, H, W) ids of `propagate_masks(video, given)`, from the session's kept features."""
        session.reset()
        for t, mask in given.items():
            session.add_mask(t, mask)
        with later_sample(sample):
            return np.stack([mask for _, mask in session.propagate(start=0)])

    rows = []
    generated = {f"generated {seed}": make_demo_clip(n_frames=30, size=(240, 320), seed=seed) for seed in (1, 2)}
    clips = {name: clip(name, 40) for name in ("car-shadow", "dog")}
    for name, (frames, gt) in {**clips, **generated}.items():
        with tcore.PropagationSession(list(frames), **options) as session:
            none = masks_of(session, {0: gt[0]}, "cover")
            for k in args.at if args.at and name in clips else [len(frames) // 2]:
                row = {"clip": name, "case": f"correction at {k}", "no correction": round(jf(gt[k:], none[k:]), 3)}
                for sample in ("centre", "cover"):
                    masks = masks_of(session, {0: gt[0], k: gt[k]}, sample)
                    row[f"{sample} (rule {'before' if sample == 'centre' else 'now'})"] = round(
                        jf(gt[k:], masks[k:]), 3)
                rows.append(row)
    from PIL import Image

    frames, _ = clip("bmx-trees", 25)
    ids = np.array(Image.open(SHARED / "data" / "davis" / "Annotations" / "480p" / "bmx-trees" / "00000.png"))
    row = {"clip": "bmx-trees", "case": "object 2 at 10 (IoU 11-24)", "no correction": ""}
    with tcore.PropagationSession(frames, **options) as session:
        both = masks_of(session, {0: ids}, "cover")
        for sample in ("centre", "cover"):
            late = masks_of(session, {0: np.where(ids == 2, 0, ids), 10: np.where(both[10] == 2, 2, 0)}, sample)
            row[f"{sample} (rule {'before' if sample == 'centre' else 'now'})"] = round(
                float(np.mean([iou(late[t] == 2, both[t] == 2) for t in range(11, 25)])), 3)
    rows.append(row)
    for name, (frames, gt) in generated.items():
        frames, gt, k = frames.copy(), gt.copy(), 12
        for t in range(k):  # object 2 hidden under a grey patch before frame k
            frames[t][gt[t] == 2] = 128
            gt[t][gt[t] == 2] = 0
        row = {"clip": name, "case": f"object 2 enters at {k} (J&F)", "no correction": ""}
        with tcore.PropagationSession(list(frames), **options) as session:
            for sample in ("centre", "cover"):
                late = masks_of(session, {0: gt[0], k: np.where(gt[k] == 2, 2, 0)}, sample)
                row[f"{sample} (rule {'before' if sample == 'centre' else 'now'})"] = round(
                    float(davis_scores(gt[k:], late[k:])["JF"][1]), 3)
        rows.append(row)
    return rows


PARTS = {"speed": bench_speed, "memory": bench_memory, "corrections": bench_corrections}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all",
                        help="corrections needs the shared DINOv2 weights and runs with --part corrections only")
    parser.add_argument("--clip", default="car-shadow", help="shared DAVIS clip (car-shadow, dog)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--model", choices=["vits16-random", "dinov2"], default="vits16-random")
    parser.add_argument("--at", type=int, nargs="*", default=[],
                        help="corrections: correct the DAVIS clips at these frames (default: the middle one)")
    parser.add_argument("--spill-budget-mib", type=int, default=32, help="budget of the spilling run (MiB)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the memory part's child processes
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"{platform.processor() or platform.machine()}  threads {torch.get_num_threads()}  load {load:.2f}")
    print("# " + " ".join(["python", "benchmarks/session.py", *(argv if argv is not None else sys.argv[1:])]))
    for name, part in PARTS.items():
        if args.part == name or (args.part == "all" and name != "corrections"):
            print(f"\n[{name}]\n{format_table(part(args))}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
