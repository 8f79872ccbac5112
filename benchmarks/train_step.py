"""Speed and memory of one T-CoRe training step on synthetic batches (a harness that prints tables).

The step is the training loop's own (`training.pretrain.train_step`): schedules -> teacher targets
+ student forward + losses + backward -> per-module clipping + AdamW -> EMA teacher -> centres, on
one process (no DDP, no accumulation), on synthetic `training.batch.Batch`es.

    python benchmarks/train_step.py --arch vits16 --device cuda              # 64 per GPU, bf16
    python benchmarks/train_step.py --arch vitb16 --device cuda              # 32 per GPU
    python benchmarks/train_step.py --arch vits16 --device cuda --compile
    python benchmarks/train_step.py --arch vits16 --device cuda --parity     # + bf16 vs fp32 loss terms
    python benchmarks/train_step.py --tiny                                   # CPU smoke run (tiny config)

Reference (issue 5, one H200, the official step with SDPA instead of xFormers): ViT-S/16 at 64
per GPU 549 samples/s and 17.2 GB peak; ViT-B/16 at 32 per GPU 262 samples/s and 19.8 GB.
"--parity" runs the student/teacher forward and the losses of the same batch and weights in fp32
(TF32 off) and in the chosen precision, and reports each term's relative difference (target < 1 %),
for two sets of random weights: the official init, and the same with LayerScale 0.1. The verdict
uses the second: at the official init (LayerScale 1e-5, CLS and registers ~1e-6) every image's CLS
token is the same to ~1e-5, so KoLeo (-log of nearest-neighbour distances) measures rounding noise
only, in fp32 as in any lower precision.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `training` runs from a clone

import torch  # noqa: E402

from tcore.files import write_text_atomic  # noqa: E402
from tcore.distributed import DistInfo  # noqa: E402
from training.batch import Batch  # noqa: E402
from training.config import Config, load_config  # noqa: E402
from training.data import mask_rng  # noqa: E402
from training.losses import Centers, tcore_losses  # noqa: E402
from training.masking import batch_masks, mask_indices  # noqa: E402
from training.model import build_student, build_teacher, teacher_targets  # noqa: E402
from training.optim import build_schedules  # noqa: E402
from training.pretrain import build_training, train_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARCHS = {"vits16": ("vits16_k400.yaml", 64), "vitb16": ("vitb16_k400.yaml", 32), "tiny": ("tiny.yaml", 4)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_config(arch: str, batch: int, precision: str, compile_: bool, device: torch.device) -> Config:
    name, _ = ARCHS[arch]
    return load_config(REPO / "training" / "configs" / name, [
        f"optim.batch_size_per_gpu={batch}", f"optim.global_batch_size={batch}", f"train.precision={precision}",
        f"train.compile={str(compile_).lower()}", f"train.channels_last={str(device.type == 'cuda').lower()}",
        f"train.device={device.type}"])


def synthetic_batch(cfg: Config, seed: int, device: torch.device) -> Batch:
    """Model inputs of one micro-batch: normalised-looking noise crops and the official masks."""
    b, g, l = cfg.optim.batch_size_per_gpu, cfg.augment.global_size, cfg.augment.local_size
    grid = g // cfg.model.patch_size
    masks = batch_masks(2 * b, (grid, grid), mask_rng(seed, 0), cfg.mask.probability, cfg.mask.ratio_min_max)
    index = {k: torch.from_numpy(v).to(device) for k, v in mask_indices(masks).items()}
    n = len(index["aux_rows"])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format

    def crops(count: int, size: int) -> torch.Tensor:
        return torch.randn(count, 3, size, size, generator=gen).to(device).contiguous(memory_format=fmt)

    return Batch(globals=crops(2 * b, g), locals=crops(cfg.augment.n_local_crops * b, l), past=crops(n, g),
                 future=crops(n, g), masks=torch.from_numpy(masks).to(device), **index)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(cfg: Config, device: torch.device) -> Callable[[Batch, int], torch.Tensor]:
    """The training loop's step on fresh models: `step(batch, i)` -> the loss (a device tensor)."""
    state = build_training(cfg, device)
    schedules = build_schedules(cfg, 936)
    info = DistInfo(device=device)  # one process

    def step(batch: Batch, i: int) -> torch.Tensor:
        values = schedules.at(30_000 + i)  # past every warm-up: all lrs non-zero
        return train_step(state.student, state, lambda: batch, values, 30_000 + i, 1, cfg, info)["total"]

    return step


def measure(arch: str, batch: int, precision: str, compile_: bool, device: torch.device, steps: int,
            warmup: int) -> dict:
    """samples/s and peak memory of the full step on synthetic batches."""
    cfg = make_config(arch, batch, precision, compile_, device)
    step = build_step(cfg, device)
    batches = [synthetic_batch(cfg, seed, device) for seed in range(4)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = [step(batches[i % len(batches)], i) for i in range(warmup)]
    sync(device)
    start = time.perf_counter()
    losses += [step(batches[i % len(batches)], i) for i in range(warmup, warmup + steps)]
    sync(device)
    elapsed = time.perf_counter() - start
    result = {"arch": arch, "batch": batch, "precision": precision, "compile": compile_,
              "samples_per_s": steps * batch / elapsed, "step_ms": 1000 * elapsed / steps,
              "last_loss": float(losses[-1]), "finite": bool(torch.isfinite(torch.stack(losses)).all())}
    result.update(memory(device))
    return result


def memory(device: torch.device) -> dict[str, float]:
    """Peak allocated / reserved device memory in GB (CUDA only)."""
    if device.type != "cuda":
        return {}
    return {"peak_gb": torch.cuda.max_memory_allocated(device) / 1e9,
            "reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9}


def parity(arch: str, batch: int, precision: str, device: torch.device, layerscale: float | None = None
           ) -> dict[str, tuple[float, float]]:
    """Loss terms of one batch and one set of weights in fp32 (TF32 off) and in `precision`.

    Args:
        layerscale: if set, every LayerScale gamma of the backbone is filled with it (weights whose
            features differ between images), else the official init is kept.
    """
    out = {}
    for p in ("fp32", precision if precision != "fp32" else "bf16"):
        cfg = make_config(arch, batch, p, False, device)
        torch.backends.cuda.matmul.allow_tf32 = p != "fp32"
        torch.backends.cudnn.allow_tf32 = p != "fp32"
        torch.manual_seed(0)
        student = build_student(cfg.model).to(device)
        if layerscale is not None:
            with torch.no_grad():
                for name, param in student.backbone.named_parameters():
                    if name.endswith("gamma"):
                        param.fill_(layerscale)
        teacher = build_teacher(student)
        centers = Centers(cfg.model.head_n_prototypes, cfg.loss.center_momentum, device)
        data = synthetic_batch(cfg, 7, device)
        torch.manual_seed(1)  # the same drop-path draws in both runs
        dtype = DTYPES[p]
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            cls_t, patch_t = teacher_targets(teacher, data.globals, data.mask_index, centers, 0.055)
            res = student(data)
        with torch.no_grad():
            terms = tcore_losses(res, cls_t, patch_t, data.mask_weight, cfg.loss)
        out[p] = {k: float(v) for k, v in terms.as_dict().items()}
    low = [p for p in out if p != "fp32"][0]
    return {k: (out["fp32"][k], out[low][k]) for k in out["fp32"]}


def header(script: str, device: torch.device, argv: list[str]) -> str:
    """Markdown heading with the card, torch, the date and the command (for benchmarks/RESULTS.md)."""
    import os

    card = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    return (f"### {script} — {card}, torch {torch.__version__}, {datetime.date.today().isoformat()}\n\n"
            f"`python benchmarks/{script}.py {' '.join(argv)}`\n")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both training harnesses take: model, batch, precision, compile, device."""
    parser.add_argument("--arch", choices=sorted(ARCHS), default="vits16")
    parser.add_argument("--tiny", action="store_true", help="the tiny config on the CPU (a smoke run)")
    parser.add_argument("--batch", type=int, default=None, help="per-GPU batch (default: the recipe's)")
    parser.add_argument("--precision", choices=sorted(DTYPES), default=None,
                        help="autocast dtype (default bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--parity", action="store_true", help="also compare loss terms with an fp32 step")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.arch, args.device = "tiny", "cpu"
        args.steps, args.warmup = min(args.steps, 5), min(args.warmup, 2)
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    batch = args.batch or ARCHS[args.arch][1]
    print(header("train_step", device, argv))
    result = measure(args.arch, batch, args.precision, args.compile, device, args.steps, args.warmup)
    print("| arch | batch/GPU | precision | compile | samples/s | ms/step | peak alloc GB | peak reserved GB | "
          "finite |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| {result['arch']} | {batch} | {args.precision} | {args.compile} | {result['samples_per_s']:.1f} | "
          f"{result['step_ms']:.1f} | {result.get('peak_gb', float('nan')):.2f} | "
          f"{result.get('reserved_gb', float('nan')):.2f} | {result['finite']} |")
    if args.parity:
        for label, layerscale in (("official init", None), ("LayerScale 0.1", 0.1)):
            rows = parity(args.arch, batch, args.precision, device, layerscale)
            worst = max(abs(b - a) / max(abs(a), 1e-12) for a, b in rows.values())
            low = args.precision if args.precision != "fp32" else "bf16"
            print(f"\nLoss terms, same batch and weights ({label}): fp32 (TF32 off) vs {low}\n")
            print("| term | fp32 | " + low + " | rel. diff |\n|---|---|---|---|")
            for name, (a, b) in rows.items():
                print(f"| {name} | {a:.6g} | {b:.6g} | {abs(b - a) / max(abs(a), 1e-12):.3%} |")
            verdict = "PASS" if worst < 0.01 else "FAIL"
            print(f"\nworst relative difference {worst:.3%}: " + (f"{verdict} (target < 1 %)" if layerscale else
                                                                  "(not judged: KoLeo is rounding noise here)"))
            result[f"parity_{'init' if layerscale is None else 'layerscale'}"] = {k: list(v) for k, v in rows.items()}
            if layerscale is not None:
                result["parity_worst"] = worst
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2))
    return 0 if result["finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
