"""Backbone throughput: tcore's feature API against plain timm `forward_features`, same run.

Prints frames/s for ViT-S/16 and ViT-B/16 at 480x880 (the DAVIS working size), batch 1 and 8,
fp32 and bf16 autocast. tcore's backbone is itself a timm `VisionTransformer`; the baseline is the
same architecture as a stock one (4 registers, LayerScale, dynamic image size), so the ratio is the
cost of what tcore adds on the way to `patch_tokens` (the class token's own position embedding, the
(B, h, w, D) grid view, input checks). Target: ratio ~1.

    python benchmarks/backbone.py                       # everything, on the best device
    python benchmarks/backbone.py --models vits16 --batch 1 --precision fp32 --repeat 2   # quick CPU run
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

import tcore
from tcore.devices import resolve_device

ARCHS = {"vits16": (tcore.tcore_vits16, dict(embed_dim=384, depth=12, num_heads=6)),
         "vitb16": (tcore.tcore_vitb16, dict(embed_dim=768, depth=12, num_heads=12))}


def timm_baseline(args: dict) -> torch.nn.Module:
    """The same architecture as a stock timm ViT with timm's own dynamic position resizing."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=224, patch_size=16, reg_tokens=4, no_embed_class=True, init_values=1e-5,
                             dynamic_img_size=True, num_classes=0, **args).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frames_per_second(fn: Callable[[torch.Tensor], object], x: torch.Tensor, precision: str, repeat: int) -> float:
    device = x.device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        fn(x)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeat):
            fn(x)
        _sync(device)
    return repeat * x.shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--size", nargs=2, type=int, default=[480, 880], metavar=("H", "W"))
    p.add_argument("--repeat", type=int, default=5, help="timed calls per cell (after one warm-up)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    print(f"device {device} | torch {torch.__version__} | input {args.size[0]}x{args.size[1]} | "
          f"threads {torch.get_num_threads()}")
    print("| model | batch | precision | tcore frames/s | timm frames/s | tcore / timm |")
    print("|---|---:|---|---:|---:|---:|")
    for name in args.models:
        build, arch = ARCHS[name]
        ours = build(pretrained=False).to(device)
        base = timm_baseline(arch).to(device)
        for batch in args.batch:
            x = torch.randn(batch, 3, *args.size, device=device)
            for precision in args.precision:
                a = frames_per_second(ours.patch_tokens, x, precision, args.repeat)
                b = frames_per_second(base.forward_features, x, precision, args.repeat)
                print(f"| {name} | {batch} | {precision} | {a:.2f} | {b:.2f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
