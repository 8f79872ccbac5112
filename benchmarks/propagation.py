"""Speed and memory of label propagation (a harness that prints tables; not a test).

Parts (`--part`):

* ``engine``: `tcore.propagate_labels` against a straightforward reference-style engine written
  here the way the official code works (the padded sequence of T + n_context frames, keys gathered
  per target frame, dense affinities + radius mask + top-k + softmax, then the recurrence), on the
  same random drifting unit features: agreement (max |diff|, argmax differences), both times and
  the ratio. Then the stream-mode peak memory of the engine for a short and a long video (it must
  be flat): on CPU the peak growth of the memory malloc has in use (sampled every millisecond), on
  CUDA `torch.cuda.max_memory_allocated`.
* ``pipeline``: the whole `tcore propagate` command (JPEG decode, backbone, engine, bilinear decode,
  PNG writes overlapped in threads) on a DAVIS-sized clip with the davis preset, against the
  backbone alone on the same, already decoded frames (random ViT weights: same speed as released).

Usage::

    python benchmarks/propagation.py --part engine --frames 60 --grid 30 55 --dim 384 --device cpu
    python benchmarks/propagation.py --device cuda --repeat 3 --memory-frames 60 240
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from oracles import literal_propagation

import tcore

Row = dict[str, object]


# --- inputs ------------------------------------------------------------------------------------------

def drifting_features(frames: int, h: int, w: int, dim: int, seed: int, device: str) -> torch.Tensor:
    """(T, h, w, D) random unit features drifting from frame to frame (fp32, on `device`)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(h, w, dim, generator=gen)
    out = torch.empty(frames, h, w, dim)
    for t in range(frames):
        out[t] = F.normalize(base + 0.05 * t * torch.randn(h, w, dim, generator=gen), dim=-1)
    return out.to(device)


def first_labels(classes: int, h: int, w: int, seed: int, device: str) -> torch.Tensor:
    """(C, h, w) soft labels summing to 1 over C."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.softmax(3 * torch.randn(classes, h, w, generator=gen), dim=0).to(device)


# --- the reference-style engine: the tests' oracle (benchmarks/oracles.py), 100 queries at a time ------

def reference_propagation(features: torch.Tensor, labels: torch.Tensor, topk: int = 7, temperature: float = 0.7,
                          radius: float = 20, n_context: int = 20) -> torch.Tensor:
    """(T, h, w, D), (C, h, w) -> (T, C, h, w): `oracles.literal_propagation` in the official chunks."""
    return literal_propagation(features, labels, topk, temperature, radius, n_context, query_chunk=100)


def official_style_propagation(features: torch.Tensor, labels: torch.Tensor, topk: int = 7,
                               temperature: float = 0.7, radius: float = 20, n_context: int = 20,
                               query_chunk: int = 100, targets_per_step: int = 2) -> torch.Tensor:
    """The reference-style engine with the official code's data movement (its cost profile).

    As the official script runs it: the features live on the host; for each pair of target frames
    the keys of their padded contexts are gathered on the host and copied to the device; the radius
    mask slice is copied to the device for every 100-query chunk, and each chunk's top-k weights
    and indices are copied back to the host (a synchronisation) before the recurrence runs on the
    device. Same arithmetic, same result as `reference_propagation`.
    """
    device = features.device
    frames, h, w, dim = features.shape
    n_cells, classes = h * w, labels.shape[0]
    feats = features.reshape(frames, n_cells, dim).cpu()  # (T, N, D) on the host
    real = [max(0, e - n_context) for e in range(frames + n_context)]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cells = torch.stack([yy.flatten(), xx.flatten()], 1).double()
    mask = torch.where(torch.cdist(cells, cells) < radius, 0.0, -1e10).float()  # (N_k, N_q) on the host
    weights, index = [], []
    for t0 in range(1, frames, targets_per_step):
        targets = list(range(t0, min(frames, t0 + targets_per_step)))
        keys = torch.stack([feats[[real[e] for e in [0, *range(t, t + n_context)]]] for t in targets])  # host gather
        keys, queries = keys.to(device), feats[targets].to(device)  # (P, S, N, D), (P, N, D)
        for p in range(len(targets)):
            w_t, i_t = [], []
            for q0 in range(0, n_cells, query_chunk):
                scores = torch.einsum("skd,qd->skq", keys[p], queries[p, q0:q0 + query_chunk])
                scores[1:] += mask[:, q0:q0 + query_chunk].to(device)
                scores /= temperature
                values, idx = scores.reshape(keys.shape[1] * n_cells, -1).topk(topk, dim=0)
                w_t.append(torch.softmax(values, dim=0).cpu())
                i_t.append(idx.cpu())
            weights.append(torch.cat(w_t, 1).to(device))
            index.append(torch.cat(i_t, 1).to(device))
    bank = [labels.reshape(classes, n_cells).float()] * (n_context + 1)
    out = [labels.float()]
    for t in range(1, frames):
        context = torch.cat([bank[e] for e in [0, *range(t, t + n_context)]], 1)
        pred = (context[:, index[t - 1]] * weights[t - 1][None]).sum(1)
        bank.append(pred)
        out.append(pred.reshape(classes, h, w))
    return torch.stack(out)


# --- the engine part ---------------------------------------------------------------------------------

def _timed(fn: Callable[[], torch.Tensor], device: str, repeat: int) -> tuple[torch.Tensor, float]:
    """Result of `fn` and its best wall time over `repeat` runs."""
    best, out = float("inf"), None
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return out, best


def bench_engine(frames: int = 60, grid: Sequence[int] = (30, 55), dim: int = 384, classes: int = 5,
                 topk: int = 7, device: str = "cpu", repeat: int = 1, seed: int = 0,
                 reference: bool = True, official_style: bool = False) -> list[Row]:
    """Time tcore's engine and the reference-style engine on the same features; check agreement."""
    h, w = grid
    feats = drifting_features(frames, h, w, dim, seed, device)
    labels = first_labels(classes, h, w, seed, device)
    params = {"topk": topk, "temperature": 0.7, "radius": 20, "n_context": 20}
    tcore.propagate_labels(feats[:3], labels, **params)  # warm-up: thread pools, BLAS, allocator
    if reference:
        reference_propagation(feats[:3], labels, **params)
    ours, t_ours = _timed(lambda: tcore.propagate_labels(feats, labels, **params), device, repeat)
    rows: list[Row] = []
    common = {"frames": frames, "grid": f"{h}x{w}", "D": dim, "C": classes, "K": topk, "device": device}
    if reference:
        ref, t_ref = _timed(lambda: reference_propagation(feats, labels, **params), device, 1)
        agree = {"max|diff|": f"{(ours - ref).abs().max().item():.1e}",
                 "argmax diffs": int((ours.argmax(1) != ref.argmax(1)).sum())}
        rows.append({"engine": "reference-style", **common, "time s": round(t_ref, 3),
                     "s/frame": round(t_ref / (frames - 1), 4), "speed-up": 1.0, **agree})
        if official_style:
            params_official = dict(params)
            official_style_propagation(feats[:3], labels, **params_official)  # warm-up
            off, t_off = _timed(lambda: official_style_propagation(feats, labels, **params_official), device, 1)
            rows.append({"engine": "official-style data movement", **common, "time s": round(t_off, 3),
                         "s/frame": round(t_off / (frames - 1), 4), "speed-up": round(t_ref / t_off, 2),
                         "max|diff|": f"{(ours - off).abs().max().item():.1e}",
                         "argmax diffs": int((ours.argmax(1) != off.argmax(1)).sum())})
    rows.append({"engine": "tcore", **common, "time s": round(t_ours, 3), "s/frame": round(t_ours / (frames - 1), 4),
                 "speed-up": round(t_ref / t_ours, 1) if reference else "-",
                 **(agree if reference else {})})
    if reference and official_style:
        rows[-1]["vs official-style"] = f"{t_off / t_ours:.1f}x"
    return rows


_MEMORY_CHILD = """
import json, sys
sys.path.insert(0, {here!r})
from propagation import stream_memory
print(json.dumps(stream_memory(**json.loads(sys.argv[1]))))
"""


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _heap_probe() -> tuple[Callable[[], int], str]:
    """A function giving the bytes of CPU memory in use now, and its name.

    glibc's `mallinfo2` counts live allocations (torch's CPU tensors included) and not the freed
    memory malloc keeps, so its peak is the CPU analogue of `torch.cuda.max_memory_allocated`.
    Elsewhere: anonymous resident memory (resident minus file-backed pages, Linux).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        def anon_rss() -> int:
            with open("/proc/self/statm") as f:
                _, resident, shared = (int(v) for v in f.read().split()[:3])
            return (resident - shared) * os.sysconf("SC_PAGE_SIZE")
        return anon_rss, "anon RSS"

    def live() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd
    return live, "malloc in use"


class _PeakSampler:
    """Samples `probe()` every `interval` seconds in a thread; `peak` is the largest sample."""

    def __init__(self, probe: Callable[[], int], interval: float = 0.001) -> None:
        self.probe, self.interval, self.peak = probe, interval, probe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.probe())

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.probe())


def stream_memory(frames: int, grid: Sequence[int], dim: int, classes: int, topk: int, device: str,
                  seed: int, frames_per_step: int = 8) -> Row:
    """Peak memory growth of the engine while streaming `frames` frames through a `Propagator`.

    The features are made before the baseline is taken and outputs are dropped, so the growth is
    the engine's own (its context plus per-step workspace). CPU: the peak of the memory malloc has
    in use (sampled every millisecond, see `_heap_probe`) over its value before the loop. CUDA:
    `torch.cuda.max_memory_allocated` growth.
    """
    h, w = grid
    feats = drifting_features(frames, h, w, dim, seed, device)
    prop = tcore.Propagator(topk=topk, temperature=0.7, radius=20, n_context=20)
    prop.reset(feats[0], first_labels(classes, h, w, seed, device))
    prop.step(feats[1:2])  # warm-up: allocator and thread pools
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    probe, probe_name = _heap_probe()
    before = torch.cuda.memory_allocated() if cuda else probe()
    start = time.perf_counter()
    sampler = None if cuda else _PeakSampler(probe)
    with sampler or contextlib.nullcontext():
        for t0 in range(2, frames, frames_per_step):
            prop.step(feats[t0:t0 + frames_per_step])
        if cuda:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak, how = torch.cuda.max_memory_allocated() - before, "cuda max_memory_allocated growth"
    else:
        peak, how = sampler.peak - before, f"peak {probe_name} growth (1 ms samples)"
    return {"frames": frames, "grid": f"{h}x{w}", "D": dim, "device": device, "peak MiB": round(peak / 2**20, 1),
            "state MiB": round(prop.nbytes / 2**20, 1), "s/frame": round(seconds / max(frames - 2, 1), 4),
            "measure": how}


def bench_stream_memory(frame_counts: Sequence[int], grid: Sequence[int], dim: int, classes: int, topk: int,
                        device: str, seed: int) -> list[Row]:
    """`stream_memory` for each frame count, each in a fresh process on CPU (a clean heap for each)."""
    rows = []
    for frames in frame_counts:
        kwargs = {"frames": frames, "grid": list(grid), "dim": dim, "classes": classes, "topk": topk,
                  "device": device, "seed": seed}
        if device.startswith("cuda"):
            rows.append(stream_memory(**kwargs))
            continue
        code = _MEMORY_CHILD.format(here=os.path.dirname(os.path.abspath(__file__)))
        done = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"stream-memory child for {frames} frames failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first = max(float(rows[0]["peak MiB"]), 1.0)  # MiB; below that, allocator noise dominates
    for row in rows:
        ratio = float(row["peak MiB"]) / first
        row["vs first"] = f"{ratio:.2f}x"
        row["flat (<=1.10x)"] = "yes" if ratio <= 1.10 else "NO"
    return rows


def bench_bands(bands: Sequence[int], frames: int, grid: Sequence[int], dim: int, classes: int, topk: int,
                device: str, repeat: int, seed: int) -> list[Row]:
    """tcore's engine with each band size (query cells per band) on the same features.

    The output must not depend on the band size (the banding only skips keys out of reach).
    """
    from tcore.propagation import engine

    h, w = grid
    feats = drifting_features(frames, h, w, dim, seed, device)
    labels = first_labels(classes, h, w, seed, device)
    params = {"topk": topk, "temperature": 0.7, "radius": 20, "n_context": 20}
    kind = torch.device(device).type
    saved = engine._BAND_QUERIES.get(kind)
    rows: list[Row] = []
    first = None
    try:
        for band in bands:
            engine._BAND_QUERIES[kind] = band
            tcore.propagate_labels(feats[:3], labels, **params)  # warm-up (geometry, allocator)
            out, seconds = _timed(lambda: tcore.propagate_labels(feats, labels, **params), device, repeat)
            first = out if first is None else first
            n_bands = len(engine._build_geometry(h, w, 20, torch.device(device)).bands)
            rows.append({"band queries": band, "bands": n_bands, "grid": f"{h}x{w}", "device": device,
                         "time s": round(seconds, 3), "ms/frame": round(1000 * seconds / (frames - 1), 2),
                         "max|diff| vs first": f"{(out - first).abs().max().item():.1e}"})
    finally:
        if saved is None:
            engine._BAND_QUERIES.pop(kind, None)
        else:
            engine._BAND_QUERIES[kind] = saved
    best = min(rows, key=lambda row: float(row["time s"]))
    for row in rows:
        row["best"] = "<-" if row is best else ""
    return rows


def engine_part(args: argparse.Namespace) -> Iterator[tuple[str, list[Row]]]:
    """The engine tables: speed and agreement, the band-size sweep, then stream-mode memory."""
    yield ("engine: tcore vs reference-style (same features)",
           bench_engine(args.frames, args.grid, args.dim, args.classes, args.topk, args.device, args.repeat,
                        args.seed, reference=not args.no_reference, official_style=args.official_style))
    if args.bands:
        yield ("engine: band size (query cells per band) sweep",
               bench_bands(args.bands, args.frames, args.grid, args.dim, args.classes, args.topk, args.device,
                           args.repeat, args.seed))
    if args.memory_frames:
        yield ("engine: stream-mode peak memory",
               bench_stream_memory(args.memory_frames, args.grid, args.dim, args.classes, args.topk, args.device,
                                   args.seed))


def _write_clip(folder: str, frames: int, unique: int) -> tuple[str, str]:
    """A DAVIS-sized JPEG frame folder (854x480, the built-in demo clip) and its first mask.

    `unique` distinct frames are rendered and encoded; the other files are byte copies of them
    (decoding costs the same, and rendering 2,000 demo frames would take longer than the run).
    """
    import shutil

    from PIL import Image

    from tcore.demo import make_demo_clip

    clip, masks = make_demo_clip(n_frames=min(unique, frames), size=(480, 854))
    video = os.path.join(folder, "frames")
    os.makedirs(video)
    for t in range(frames):
        path = os.path.join(video, f"{t:05d}.jpg")
        if t < len(clip):
            Image.fromarray(clip[t]).save(path, quality=90)
        else:
            shutil.copyfile(os.path.join(video, f"{t % len(clip):05d}.jpg"), path)
    mask = os.path.join(folder, "00000.png")
    tcore.io.write_mask(mask, masks[0])
    return video, mask


def _stopwatch(device: str, fn: Callable[[], object]) -> float:
    """Seconds of `fn()` with the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_pipeline(frames: int, arch: str, device: str, batch_size: int, unique: int = 100
                   ) -> tuple[list[Row], str]:
    """`tcore propagate` (decode, backbone, engine, decode-out, PNG writes) vs the backbone alone.

    Also each stage alone, to show where the time goes: JPEG decoding (one thread and the
    pipeline's decode threads), the backbone on pre-decoded frames, the engine on the features,
    and the output decoding (upsampling, argmax, resize to 854x480, copy to the host).
    """
    import tempfile

    from tcore.cli import main as cli
    from tcore.propagation.encoder import _DECODE_WORKERS, FrameEncoder
    from tcore.propagation.labels import decode_ids

    dev = torch.device(device)
    build = {"vits16": tcore.tcore_vits16, "vitb16": tcore.tcore_vitb16}[arch]
    rows: list[Row] = []

    def row(stage: str, seconds: float, note: str = "") -> None:
        rows.append({"stage": stage, "model": arch, "frames": frames, "time s": f"{seconds:.2f}",
                     "ms/frame": f"{1000 * seconds / frames:.2f}", "frames/s": f"{frames / seconds:.0f}",
                     "note": note})

    with tempfile.TemporaryDirectory() as tmp:
        made = time.perf_counter()
        video, mask = _write_clip(tmp, frames, unique)
        made = time.perf_counter() - made
        jpeg_kb = sum(os.path.getsize(os.path.join(video, f)) for f in os.listdir(video)[:unique]) / unique / 1e3
        model = build(pretrained=False)  # random weights: same speed as the released ones
        model.save_pretrained(os.path.join(tmp, "model"))
        model = model.to(dev)
        frames_in = tcore.read_video(video)
        start = time.perf_counter()
        decoded = list(frames_in)
        row("decode JPEG, 1 thread", time.perf_counter() - start, f"{jpeg_kb:.0f} kB/frame, 854x480")
        start = time.perf_counter()
        for _ in frames_in.iter_threaded(_DECODE_WORKERS):
            pass
        row(f"decode JPEG, {_DECODE_WORKERS} threads", time.perf_counter() - start, "what the pipeline uses")
        encoder = FrameEncoder(model, (480, 880), dev, batch_size)
        encoder(decoded[:batch_size])  # warm-up
        feats: list[torch.Tensor] = []
        backbone = _stopwatch(device, lambda: feats.extend(
            encoder(decoded[i:i + batch_size]) for i in range(0, frames, batch_size)))
        row("backbone alone (pre-decoded frames)", backbone, f"batch {batch_size}, fp32, 480x880")
        decoded.clear()  # free the frames (a `del` would hide the name from the closures above)
        features = torch.cat(feats)  # (T, 30, 55, D) on the device
        feats.clear()
        first = first_labels(3, 30, 55, 0, device)
        out: list[torch.Tensor] = []
        engine = _stopwatch(device, lambda: out.extend(_stream_engine(features, first, batch_size)))
        row("engine alone (on those features)", engine, "top-7, radius 20, 20 context frames")
        classes = torch.arange(3, dtype=torch.uint8).numpy()
        decode_out = _stopwatch(device, lambda: [decode_ids(x, classes, (480, 880), (480, 854)) for x in out])
        row("output decoding alone", decode_out, "upsample, argmax, resize, to host")
        features, out = None, []  # free them before the whole-pipeline runs
        args = ["propagate", video, mask, "-o", os.path.join(tmp, "out"), "--model", os.path.join(tmp, "model"),
                "--preset", "davis", "--device", device, "--batch-size", str(batch_size), "--quiet"]
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            total = _stopwatch(device, lambda: cli(args))
        row("tcore propagate (JPEG decode ... PNG write)", total, f"{total / backbone:.2f}x the backbone alone")
    summary = (f"{frames / total:.1f} frames/s end to end; DAVIS-2017 val (1,999 frames) at this rate: "
               f"{1999 * total / frames:.1f} s; {total / backbone:.2f}x the backbone alone (clip written in "
               f"{made:.0f} s)")
    return rows, summary


def _stream_engine(features: torch.Tensor, first: torch.Tensor, step: int) -> Iterator[torch.Tensor]:
    """Soft labels (C, h, w) of every frame, streamed through a `Propagator` `step` frames at a time."""
    prop = tcore.Propagator(check_norms=False)  # FrameEncoder's features are unit vectors: no read-back
    yield prop.reset(features[0], first)
    for t0 in range(1, features.shape[0], step):
        yield from prop.step(features[t0:t0 + step])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pipeline_part(args: argparse.Namespace) -> Iterator[tuple[str, list[Row]]]:
    """The whole pipeline on a DAVIS-sized clip against the backbone alone."""
    rows, summary = bench_pipeline(args.pipeline_frames, args.pipeline_model, args.device, args.batch_size,
                                   args.pipeline_unique)
    yield f"pipeline: tcore propagate (davis preset), stage by stage\n{summary}", rows


# name -> function(args) yielding (title, rows) tables
PARTS: dict[str, Callable[[argparse.Namespace], Iterator[tuple[str, list[Row]]]]] = {
    "engine": engine_part, "pipeline": pipeline_part}


# --- output and command line -------------------------------------------------------------------------

def format_table(rows: list[Row]) -> str:
    """Rows of equal keys as a fixed-width text table."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[str(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [keys, ["-" * wd for wd in widths], *cells]
    return "\n".join("  ".join(v.rjust(wd) for v, wd in zip(values, widths)) for values in lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--frames", type=int, default=60, help="frames in the timed video (default 60)")
    parser.add_argument("--grid", type=int, nargs=2, default=[30, 55], metavar=("H", "W"),
                        help="feature grid (default 30 55: DAVIS 480x880 at patch 16)")
    parser.add_argument("--dim", type=int, default=384, help="feature width D (default 384: ViT-S)")
    parser.add_argument("--classes", type=int, default=5, help="label channels C (default 5)")
    parser.add_argument("--topk", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of tcore's engine; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference-style engine")
    parser.add_argument("--official-style", action="store_true",
                        help="also time the reference-style engine with the official code's host gathers and copies")
    parser.add_argument("--memory-frames", type=int, nargs="*", default=[60, 240],
                        help="video lengths for the stream-memory table (none: skip it)")
    parser.add_argument("--pipeline-frames", type=int, default=24, help="frames of the pipeline clip (854x480)")
    parser.add_argument("--pipeline-unique", type=int, default=100,
                        help="distinct frames rendered for the pipeline clip; the rest are copies (default 100)")
    parser.add_argument("--pipeline-model", default="vits16", choices=["vits16", "vitb16"])
    parser.add_argument("--bands", type=int, nargs="*", default=[],
                        help="engine part: also time these band sizes (query cells per band), e.g. 256 512 2048")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per backbone call (pipeline part)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the memory part's child processes
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"{platform.processor() or platform.machine()}  threads {torch.get_num_threads()}  "
          f"load {load:.2f}  device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    print("# " + " ".join(["python", "benchmarks/propagation.py", *(argv if argv is not None else sys.argv[1:])]))
    for name, part in PARTS.items():
        if args.part in (name, "all"):
            for title, rows in part(args):
                print(f"\n[{title}]\n{format_table(rows)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
