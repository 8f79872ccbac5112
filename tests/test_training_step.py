"""One training step in isolation: precision, gradient clipping per module, accumulation seeds."""
from __future__ import annotations

import pytest
import torch

from training.config import load_config
from training.losses import Centers
from training.masking import mask_indices
from training.model import build_student, build_teacher
from training.optim import build_optimizer
from training.pretrain import forward_backward, micro_seed, optimizer_step


def _setup(precision: str):
    cfg = load_config("training/configs/tiny.yaml", [f"train.precision={precision}", "model.drop_path_rate=0.0"])
    torch.manual_seed(0)
    student = build_student(cfg.model)
    teacher = build_teacher(student)
    gen = torch.Generator().manual_seed(1)
    masks = torch.zeros(8, 4, dtype=torch.bool)
    masks[[1, 2, 4, 7], :2] = True
    index = {k: torch.from_numpy(v) for k, v in mask_indices(masks.numpy()).items()}
    batch = {"globals": torch.randn(8, 3, 32, 32, generator=gen), "locals": torch.randn(8, 3, 16, 16, generator=gen),
             "masks": masks, **index, "past": torch.randn(4, 3, 32, 32, generator=gen),
             "future": torch.randn(4, 3, 32, 32, generator=gen)}
    return cfg, student, teacher, batch


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_losses_match_fp32(precision):
    results = {}
    for p in ("fp32", precision):
        cfg, student, teacher, batch = _setup(p)
        scaler = torch.amp.GradScaler("cpu", enabled=p == "fp16")
        centers = Centers(cfg.model.head_n_prototypes, 0.9, torch.device("cpu"))
        terms = forward_backward(student, teacher, centers, batch, 0.04, cfg, 1.0, scaler)
        results[p] = {k: v.item() for k, v in terms.as_dict().items()}
    for name, value in results["fp32"].items():
        assert results[precision][name] == pytest.approx(value, rel=0.02, abs=1e-4), name


def test_gradients_are_clipped_per_module(monkeypatch):
    cfg, student, teacher, batch = _setup("fp32")
    optimizer = build_optimizer(student, cfg.optim, cfg.model.depth, torch.device("cpu"))
    for p in student.parameters():
        p.grad = torch.full_like(p, 10.0)
    norms = {}
    original = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm):
        params = list(params)
        total = original(params, max_norm)
        norms[len(norms)] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    optimizer_step(student, optimizer, torch.amp.GradScaler("cpu", enabled=False), 3.0)
    assert len(norms) == 3 and all(n == pytest.approx(3.0, rel=1e-4) for n in norms.values())
    assert all(p.grad is None for p in student.parameters())  # zero_grad(set_to_none=True)


def test_micro_batch_seeds_are_distinct_and_reproducible():
    seeds = [micro_seed(0, g) for g in range(100)]
    assert len(set(seeds)) == 100 and seeds == [micro_seed(0, g) for g in range(100)]
    assert micro_seed(1, 0) != micro_seed(0, 0)
