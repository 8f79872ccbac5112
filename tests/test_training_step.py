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


def test_single_process_collectives_return_at_once_and_bad_torchrun_variables_are_named(monkeypatch):
    from tcore.distributed import DistInfo, all_gather_objects, barrier, broadcast_object, torchrun_env

    info = DistInfo()
    assert info.is_main and not info.distributed
    assert broadcast_object({"a": 1}, info) == {"a": 1} and all_gather_objects(3, info) == [3]
    barrier(info)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        torchrun_env()


def test_plan_steps_names_an_uneven_global_batch_and_too_few_videos():
    from tcore.distributed import DistInfo
    from training.pretrain import plan_steps

    cfg = load_config("training/configs/tiny.yaml", ["optim.global_batch_size=12"])
    plan = plan_steps(cfg, DistInfo(), 100)
    assert (plan.accum, plan.epoch_length, plan.total_steps, plan.end_step) == (3, 3, 6, 6)
    with pytest.raises(ValueError, match="multiple of optim.batch_size_per_gpu=4 x 2 processes = 8"):
        plan_steps(cfg, DistInfo(rank=0, world_size=2), 100)
    auto = load_config("training/configs/tiny.yaml", ["optim.epoch_length=auto", "train.stop_at_step=1"])
    assert plan_steps(auto, DistInfo(), 17).epoch_length == 2 and plan_steps(auto, DistInfo(), 17).end_step == 1
    with pytest.raises(ValueError, match="7 videos give no full global batch of 8"):
        plan_steps(auto, DistInfo(), 7)
