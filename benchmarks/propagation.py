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


# --- the reference-style engine ---------------------------------------------------------------------

def reference_propagation(features: torch.Tensor, labels: torch.Tensor, topk: int = 7, temperature: float = 0.7,
                          radius: float = 20, n_context: int = 20, query_chunk: int = 100) -> torch.Tensor:
    """The official engine's way: padded sequence, per-target key gather, dense masked top-k.

    Args:
        features: (T, h, w, D) unit features.
        labels: (C, h, w) soft labels of frame 0.
        topk, temperature, radius, n_context: the protocol's hyper-parameters.
        query_chunk: queries per dense affinity chunk (the official code uses 100).

    Returns:
        (T, C, h, w) soft labels.
    """
    frames, h, w, dim = features.shape
    n_cells, classes = h * w, labels.shape[0]
    feats = features.reshape(frames, n_cells, dim)  # (T, N, D)
    real = [max(0, e - n_context) for e in range(frames + n_context)]  # extended index -> real frame
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cells = torch.stack([yy.flatten(), xx.flatten()], 1).double()  # (N, 2)
    mask = torch.where(torch.cdist(cells, cells) < radius, 0.0, -1e10).float().to(features.device)  # (N_k, N_q)
    weights, index = [], []
    for t in range(1, frames):  # all affinities first: they depend on features only
        slots = [0, *range(t, t + n_context)]
        keys = feats[[real[e] for e in slots]]  # (S, N, D) gathered copy
        w_t, i_t = [], []
        for q0 in range(0, n_cells, query_chunk):
            scores = torch.einsum("skd,qd->skq", keys, feats[t, q0:q0 + query_chunk])  # (S, N_k, n_q)
            scores[1:] += mask[:, q0:q0 + query_chunk]
            scores /= temperature
            values, idx = scores.reshape(len(slots) * n_cells, -1).topk(topk, dim=0)  # (K, n_q)
            w_t.append(torch.softmax(values, dim=0))
            i_t.append(idx)
        weights.append(torch.cat(w_t, 1))
        index.append(torch.cat(i_t, 1))
    bank = [labels.reshape(classes, n_cells).float()] * (n_context + 1)  # extended frames 0..n_context
    out = [labels.float()]
    for t in range(1, frames):
        context = torch.cat([bank[e] for e in [0, *range(t, t + n_context)]], 1)  # (C, S*N)
        pred = (context[:, index[t - 1]] * weights[t - 1][None]).sum(1)  # (C, N)
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
                 reference: bool = True) -> list[Row]:
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
    rows.append({"engine": "tcore", **common, "time s": round(t_ours, 3), "s/frame": round(t_ours / (frames - 1), 4),
                 "speed-up": round(t_ref / t_ours, 1) if reference else "-",
                 **(agree if reference else {})})
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


def engine_part(args: argparse.Namespace) -> Iterator[tuple[str, list[Row]]]:
    """The engine tables: speed and agreement, then stream-mode memory."""
    yield ("engine: tcore vs reference-style (same features)",
           bench_engine(args.frames, args.grid, args.dim, args.classes, args.topk, args.device, args.repeat,
                        args.seed, reference=not args.no_reference))
    if args.memory_frames:
        yield ("engine: stream-mode peak memory",
               bench_stream_memory(args.memory_frames, args.grid, args.dim, args.classes, args.topk, args.device,
                                   args.seed))


def _write_clip(folder: str, frames: int) -> tuple[str, str]:
    """A DAVIS-sized JPEG frame folder (854x480, the built-in demo clip) and its first mask."""
    from PIL import Image

    from tcore.demo import make_demo_clip

    clip, masks = make_demo_clip(n_frames=frames, size=(480, 854))
    video = os.path.join(folder, "frames")
    os.makedirs(video)
    for t, frame in enumerate(clip):
        Image.fromarray(frame).save(os.path.join(video, f"{t:05d}.jpg"), quality=90)
    mask = os.path.join(folder, "00000.png")
    tcore.io.write_mask(mask, masks[0])
    return video, mask


def bench_pipeline(frames: int, arch: str, device: str, batch_size: int) -> list[Row]:
    """`tcore propagate` (decode, backbone, engine, decode-out, PNG writes) vs the backbone alone."""
    import tempfile

    from tcore.cli import main as cli
    from tcore.propagation.features import FrameEncoder

    dev = torch.device(device)
    build = {"vits16": tcore.tcore_vits16, "vitb16": tcore.tcore_vitb16}[arch]
    with tempfile.TemporaryDirectory() as tmp:
        video, mask = _write_clip(tmp, frames)
        model = build(pretrained=False)  # random weights: same speed as the released ones
        model.save_pretrained(os.path.join(tmp, "model"))
        model = model.to(dev)
        decoded = list(tcore.read_video(video))
        encoder = FrameEncoder(model, (480, 880), dev, batch_size)
        encoder(decoded[:batch_size])  # warm-up
        _sync(device)
        start = time.perf_counter()
        for i in range(0, frames, batch_size):
            encoder(decoded[i:i + batch_size])
        _sync(device)
        backbone = time.perf_counter() - start
        args = ["propagate", video, mask, "-o", os.path.join(tmp, "out"), "--model", os.path.join(tmp, "model"),
                "--preset", "davis", "--device", device, "--batch-size", str(batch_size), "--quiet"]
        start = time.perf_counter()
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            cli(args)
        _sync(device)
        total = time.perf_counter() - start
    return [{"pipeline": "backbone only (pre-decoded frames)", "model": arch, "frames": frames, "size": "480x880",
             "time s": f"{backbone:.2f}", "s/frame": f"{backbone / frames:.3f}", "vs backbone": "1.00x"},
            {"pipeline": "tcore propagate (JPEG decode ... PNG write)", "model": arch, "frames": frames,
             "size": "480x880", "time s": f"{total:.2f}", "s/frame": f"{total / frames:.3f}",
             "vs backbone": f"{total / backbone:.2f}x"}]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pipeline_part(args: argparse.Namespace) -> Iterator[tuple[str, list[Row]]]:
    """The whole pipeline on a DAVIS-sized clip against the backbone alone."""
    yield ("pipeline: tcore propagate (davis preset) vs the backbone alone",
           bench_pipeline(args.pipeline_frames, args.pipeline_model, args.device, args.batch_size))


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
    parser.add_argument("--memory-frames", type=int, nargs="*", default=[60, 240],
                        help="video lengths for the stream-memory table (none: skip it)")
    parser.add_argument("--pipeline-frames", type=int, default=24, help="frames of the pipeline clip (854x480)")
    parser.add_argument("--pipeline-model", default="vits16", choices=["vits16", "vitb16"])
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
