"""Parameter groups, AdamW and the schedules of the global step (docs/training-recipe.md §8).

Schedules are arrays indexed by the optimizer step, as DINOv2's `CosineScheduler`: a linear
warm-up (endpoint included) then a half cosine to the final value; past the end, the final value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.config import Config, OptimConfig

__all__ = ["cosine_schedule", "Schedules", "build_schedules", "param_multipliers", "build_param_groups",
           "build_optimizer", "apply_schedules", "scaled_lr"]


def cosine_schedule(base: float, final: float, total: int, warmup: int = 0, start: float = 0.0) -> np.ndarray:
    """(total,) values: linspace(start, base, warmup) then base -> final by a half cosine."""
    if warmup > total:
        raise ValueError(f"warm-up of {warmup} steps is longer than the {total} steps of training")
    ramp = np.linspace(start, base, warmup)
    i = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(len(i), 1)))
    return np.concatenate([ramp, cosine])


@dataclass(frozen=True)
class Schedules:
    """Per-step values; `at(step)` clamps past the end to the final value."""

    lr: np.ndarray
    last_layer_lr: np.ndarray
    pmm_lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    def at(self, step: int) -> dict[str, float]:
        return {name: float(arr[min(step, len(arr) - 1)]) for name, arr in self.__dict__.items()}


def scaled_lr(cfg: OptimConfig) -> float:
    """Peak lr: base_lr * sqrt(global batch / 1024) ("sqrt_wrt_1024"), or base_lr unscaled."""
    if cfg.lr_scaling == "sqrt_wrt_1024":
        return cfg.base_lr * math.sqrt(cfg.global_batch_size / 1024)
    return cfg.base_lr


def build_schedules(cfg: Config, epoch_length: int) -> Schedules:
    """Every schedule of the run (docs/training-recipe.md §8.2) for `epochs * epoch_length` steps."""
    o, loss = cfg.optim, cfg.loss
    total = o.epochs * epoch_length
    warmup = o.warmup_epochs * epoch_length
    peak = scaled_lr(o)
    lr = cosine_schedule(peak, o.min_lr, total, warmup)
    last_layer = lr.copy()
    last_layer[:o.freeze_last_layer_epochs * epoch_length] = 0.0
    temp_steps = loss.warmup_teacher_temp_epochs * epoch_length
    teacher_temp = np.concatenate([np.linspace(loss.warmup_teacher_temp, loss.teacher_temp, min(temp_steps, total)),
                                   np.full(max(total - temp_steps, 0), loss.teacher_temp)])
    return Schedules(
        lr=lr,
        last_layer_lr=last_layer,
        pmm_lr=cosine_schedule(peak * o.pmm_lr_mult, o.min_lr, total, warmup),  # floor not multiplied (official)
        weight_decay=cosine_schedule(o.weight_decay, o.weight_decay_end, total),
        momentum=cosine_schedule(o.momentum_teacher, o.final_momentum_teacher, total),
        teacher_temp=teacher_temp,
    )


# backbone parameters of layer 0: tcore's names, and the official `register_tokens` (the recipe's rule, §8.3)
_EMBEDDINGS = ("cls_token", "cls_pos_embed", "pos_embed", "reg_token", "register_tokens", "mask_token", "patch_embed")


def param_multipliers(name: str, depth: int, cfg: OptimConfig, in_backbone: bool) -> tuple[float, float]:
    """(lr multiplier, weight-decay multiplier) of one parameter (docs/training-recipe.md §8.3).

    Backbone layer ids: the embeddings (cls_token, cls_pos_embed, pos_embed, reg_token, mask_token;
    `register_tokens` in the official names) and patch_embed.* -> 0, blocks.i.* -> i + 1, the rest
    (final norm) -> depth + 1; lr multiplier
    layerwise_decay ** (depth + 1 - id), times patch_embed_lr_mult for patch_embed.*. Head and PMM
    parameters: 1. Weight decay 0 when the name ends with ".bias" or contains "norm" or "gamma".
    """
    lr_mult = 1.0
    if in_backbone:
        if name.startswith(_EMBEDDINGS):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = depth + 1
        lr_mult = cfg.layerwise_decay ** (depth + 1 - layer)
        if name.startswith("patch_embed"):
            lr_mult *= cfg.patch_embed_lr_mult
    wd_mult = 0.0 if name.endswith(".bias") or "norm" in name or "gamma" in name else 1.0
    return lr_mult, wd_mult


def build_param_groups(student: nn.Module, cfg: OptimConfig, depth: int) -> list[dict]:
    """AdamW groups of the student: parameters with equal (lr_mult, wd_mult, is_last, is_pmm) fused.

    Args:
        student: a `training.model.Student` (backbone, dino_head, pmm).
        depth: the backbone depth.
    """
    groups: dict[tuple[float, float, bool, bool], dict] = {}
    for module_name in ("backbone", "dino_head", "pmm"):
        for name, param in getattr(student, module_name).named_parameters():
            lr_mult, wd_mult = param_multipliers(name, depth, cfg, module_name == "backbone")
            key = (lr_mult, wd_mult, "last_layer" in name, module_name == "pmm")
            group = groups.setdefault(key, {"params": [], "names": [], "lr_mult": lr_mult, "wd_mult": wd_mult,
                                            "is_last_layer": key[2], "is_pmm": key[3]})
            group["params"].append(param)
            group["names"].append(f"{module_name}.{name}")
    return list(groups.values())


def build_optimizer(student: nn.Module, cfg: OptimConfig, depth: int, device: torch.device) -> torch.optim.AdamW:
    """AdamW (fused on CUDA, foreach elsewhere) over the student's groups; lr/wd are set per step."""
    groups = build_param_groups(student, cfg, depth)
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.adamw_betas, weight_decay=0.0,
                             fused=fused, foreach=None if fused else True)


def apply_schedules(optimizer: torch.optim.Optimizer, values: dict[str, float], lr_groups: str) -> None:
    """Set every group's lr and weight decay for this step.

    "fixed" (official since 2025-10): lr = (last_layer_lr if last layer else lr) * lr_mult, PMM
    groups lr = pmm_lr. "march2025" (the code of the released checkpoints): every non-PMM group
    gets the plain lr (no layer decay, no patch-embed factor, no last-layer freeze). Weight decay
    is wd * wd_mult in both.
    """
    for group in optimizer.param_groups:
        if group["is_pmm"]:
            lr = values["pmm_lr"]
        elif lr_groups == "march2025":
            lr = values["lr"]
        else:
            lr = (values["last_layer_lr"] if group["is_last_layer"] else values["lr"]) * group["lr_mult"]
        group["lr"] = lr
        group["weight_decay"] = values["weight_decay"] * group["wd_mult"]
