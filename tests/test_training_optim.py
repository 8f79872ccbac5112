"""Schedules and parameter groups (docs/training-recipe.md §8)."""
from __future__ import annotations

import math

import pytest
import torch

from training.config import Config, OptimConfig, load_config
from training.model import build_student
from training.optim import (apply_schedules, build_optimizer, build_param_groups,
                            build_schedules, cosine_schedule, param_multipliers, scaled_lr)


def test_peak_lr_is_sqrt_scaled_from_1024():
    assert scaled_lr(OptimConfig()) == pytest.approx(0.001)  # 0.002 * sqrt(256 / 1024)
    assert scaled_lr(OptimConfig(batch_size_per_gpu=32, global_batch_size=128)) == pytest.approx(0.002 / math.sqrt(8))


def test_official_schedules_at_start_end_of_warmup_and_end():
    s = build_schedules(Config(), 936)
    total, warm = 400 * 936, 20 * 936
    assert len(s.lr) == total
    at = s.at
    assert at(0)["lr"] == 0.0 and at(0)["pmm_lr"] == 0.0
    assert at(warm - 1)["lr"] == pytest.approx(0.001) and at(warm)["lr"] == pytest.approx(0.001)  # peak repeats once
    assert at(warm - 1)["pmm_lr"] == pytest.approx(1e-4)
    assert at(total - 1)["lr"] == pytest.approx(1e-6, rel=1e-3) and at(10 ** 9)["lr"] == at(total - 1)["lr"]
    assert at(total - 1)["pmm_lr"] == pytest.approx(1e-6, rel=1e-2)  # floor not multiplied by 0.1
    assert at(0)["weight_decay"] == pytest.approx(0.04)
    assert at(total - 1)["weight_decay"] == pytest.approx(0.4, rel=1e-6)
    assert at(0)["momentum"] == pytest.approx(0.992) and at(total - 1)["momentum"] == pytest.approx(1.0, abs=1e-9)
    assert at(0)["teacher_temp"] == 0.04 and at(30 * 936 - 1)["teacher_temp"] == pytest.approx(0.07)
    assert at(30 * 936)["teacher_temp"] == 0.07 and at(total - 1)["teacher_temp"] == 0.07
    assert at(935)["last_layer_lr"] == 0.0 and at(936)["last_layer_lr"] == at(936)["lr"] > 0


def test_cosine_schedule_shape():
    s = cosine_schedule(1.0, 0.0, 10, warmup=3, start=0.5)
    assert s.tolist()[:3] == [0.5, 0.75, 1.0] and s[3] == 1.0
    assert s[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 6 / 7)))
    with pytest.raises(ValueError, match="warm-up"):
        cosine_schedule(1.0, 0.0, 5, warmup=6)


@pytest.mark.parametrize("name,lr_mult,wd_mult", [
    ("cls_token", 0.9 ** 13, 1.0), ("pos_embed", 0.9 ** 13, 1.0), ("register_tokens", 0.9 ** 13, 1.0),
    ("mask_token", 0.9 ** 13, 1.0), ("patch_embed.proj.weight", 0.2 * 0.9 ** 13, 1.0),
    ("patch_embed.proj.bias", 0.2 * 0.9 ** 13, 0.0), ("blocks.0.attn.qkv.weight", 0.9 ** 12, 1.0),
    ("blocks.11.mlp.fc1.bias", 0.9, 0.0), ("blocks.5.norm1.weight", 0.9 ** 7, 0.0),
    ("blocks.3.ls1.gamma", 0.9 ** 9, 0.0), ("norm.weight", 1.0, 0.0)])
def test_backbone_multipliers(name, lr_mult, wd_mult):
    assert param_multipliers(name, 12, OptimConfig(), in_backbone=True) == (pytest.approx(lr_mult), wd_mult)


@pytest.mark.parametrize("name,wd_mult", [
    ("mlp.0.weight", 1.0), ("mlp.0.bias", 0.0), ("last_layer.weight_g", 1.0), ("last_layer.weight_v", 1.0),
    ("decoder.0.auxiliary_cross_attn.in_proj_bias", 1.0),  # ends in "_bias", not ".bias": decayed (official)
    ("decoder.0.auxiliary_cross_attn.out_proj.bias", 0.0), ("decoder.0.auxiliary_layer_norm1.weight", 0.0)])
def test_head_and_pmm_multipliers(name, wd_mult):
    assert param_multipliers(name, 12, OptimConfig(), in_backbone=False) == (1.0, wd_mult)


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("training/configs/tiny.yaml")
    return cfg, build_student(cfg.model)


def test_groups_cover_every_parameter_once(tiny):
    cfg, student = tiny
    groups = build_param_groups(student, cfg.optim, cfg.model.depth)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(student.parameters()))
    last = [n for g in groups if g["is_last_layer"] for n in g["names"]]
    assert sorted(last) == ["dino_head.last_layer.weight_g", "dino_head.last_layer.weight_v"]
    assert all(n.startswith("pmm.") for g in groups if g["is_pmm"] for n in g["names"])


@pytest.mark.parametrize("mode", ["fixed", "march2025"])
def test_group_lrs_in_both_modes(tiny, mode):
    cfg, student = tiny
    opt = build_optimizer(student, cfg.optim, cfg.model.depth, torch.device("cpu"))
    values = {"lr": 1.0, "last_layer_lr": 0.0, "pmm_lr": 0.1, "weight_decay": 0.5}
    apply_schedules(opt, values, mode)
    for g in opt.param_groups:
        if g["is_pmm"]:
            expected = 0.1
        elif mode == "march2025":
            expected = 1.0  # no layer decay, no patch-embed factor, no last-layer freeze
        else:
            expected = (0.0 if g["is_last_layer"] else 1.0) * g["lr_mult"]
        assert g["lr"] == pytest.approx(expected)
        assert g["weight_decay"] == 0.5 * g["wd_mult"]
    if mode == "fixed":
        backbone = [g for g in opt.param_groups if not (g["is_last_layer"] or g["is_pmm"])]
        assert min(g["lr"] for g in backbone) == pytest.approx(0.2 * 0.9 ** 3)  # patch_embed, depth 2
