"""End-to-end training throughput on JPEG frames: decode, sandwich sampling, augmentation, masking, step.

Generates its own frames (no dataset, no network, no shared test data needed): `--videos` folders of
`--frames` JPEGs of `--size` (default 64 x 20 frames of 455x256, quality 90, textured so that files
weigh ~35 kB like natural frames), in the official `<root>/train/<class>/<video>/` layout, unless
`--data-dir` points at existing frames. Parts:

* `loader`: the data pipeline alone (DataLoader workers + transfer + GPU rendering when
  `--augment gpu`), samples/s;
* `e2e`: the pipeline and the training step of `benchmarks/train_step.py`, samples/s.

    python benchmarks/train_e2e.py --device cuda --augment gpu --workers 15
    python benchmarks/train_e2e.py --device cuda --augment cpu --workers 15
    python benchmarks/train_e2e.py --tiny                                   # CPU smoke run

Reference (issue 5, one H200 and 16 cores): the official pipeline (PIL decode of 3 frames, three
augmentation calls, collate with masking) delivers 121 samples/s with 15 workers on 455x256 JPEGs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `training` runs from a clone

import torch  # noqa: E402

from train_step import ARCHS, add_model_arguments, build_step, header, make_config, memory, sync  # noqa: E402
from training.data import ClipBatchDataset, StepSampler, build_loader, to_device_batch  # noqa: E402
from training.videos import scan_videos  # noqa: E402
from tcore.files import write_text_atomic  # noqa: E402
from training.synthetic import make_frame_folders  # noqa: E402


def run(part: str, cfg, root: Path, device: torch.device, steps: int, warmup: int) -> dict:
    """samples/s of `part` ("loader" or "e2e") over `steps` micro-batches after `warmup`."""
    b = cfg.optim.batch_size_per_gpu
    dataset = ClipBatchDataset(cfg, root, scan_videos(root), b)
    loader = build_loader(dataset, StepSampler(0, warmup + steps, 1, 0, 1), cfg.data, pin_memory=device.type == "cuda")
    step = build_step(cfg, device) if part == "e2e" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batches = iter(loader)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        batch = to_device_batch(next(batches), device, cfg.augment, cfg.train.channels_last)
        if step is not None:
            step(batch, i)
    sync(device)
    elapsed = time.perf_counter() - start
    return {"part": part, "augment": cfg.augment.device, "workers": cfg.data.num_workers, "batch": b,
            "samples_per_s": steps * b / elapsed, "ms_per_batch": 1000 * elapsed / steps, **memory(device)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)  # --tiny: also small generated frames
    parser.add_argument("--augment", choices=("cpu", "gpu"), default="gpu")
    parser.add_argument("--workers", type=int, default=min(15, max(1, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--part", choices=("loader", "e2e", "both"), default="both")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 455), metavar=("H", "W"))
    parser.add_argument("--data-dir", type=Path, default=None, help="existing frames root (else generated)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.tiny:
        args.arch, args.device, args.videos, args.frames, args.size = "tiny", "cpu", 8, 12, (72, 128)
        args.steps, args.warmup, args.workers = min(args.steps, 4), min(args.warmup, 1), min(args.workers, 2)
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    cfg = make_config(args.arch, args.batch or ARCHS[args.arch][1], precision, args.compile, device)
    print(header("train_e2e", device, argv))
    with tempfile.TemporaryDirectory(prefix="tcore_e2e_") as tmp:
        root = args.data_dir or Path(tmp)
        if args.data_dir is None:
            t0 = time.perf_counter()
            make_frame_folders(root, [args.frames] * args.videos, size=tuple(args.size), noise=6.0)
            files = list(root.rglob("*.jpg"))
            size_kb = sum(f.stat().st_size for f in files) / len(files) / 1e3
            print(f"generated {len(files)} JPEG frames of {args.size[1]}x{args.size[0]} (mean {size_kb:.1f} kB) "
                  f"in {time.perf_counter() - t0:.1f} s\n")
        from training.config import config_from_dict, config_to_dict

        values = config_to_dict(cfg)
        values["data"].update(root=str(root), layout="kinetics", num_workers=args.workers)
        values["augment"]["device"] = args.augment
        cfg = config_from_dict(values)
        parts = ("loader", "e2e") if args.part == "both" else (args.part,)
        results = [run(part, cfg, root, device, args.steps, args.warmup) for part in parts]
    print("| part | augment | workers | batch/GPU | samples/s | ms/batch | peak alloc GB |\n"
          "|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['part']} | {r['augment']} | {r['workers']} | {r['batch']} | {r['samples_per_s']:.1f} | "
              f"{r['ms_per_batch']:.1f} | {r.get('peak_gb', float('nan')):.2f} |")
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
