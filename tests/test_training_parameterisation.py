"""Training keeps the official parameterisation: a step with tcore's backbone (a timm ViT with the
class position `cls_pos_embed` beside the patch-only `pos_embed`) updates every parameter exactly as
the same step with the official parameters (`cls_token`, one `pos_embed` with a class slot,
`register_tokens`, `mask_token`), fp32, same batch and weights, with gradient clipping."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tcore.checkpoint import to_official_state_dict
from training.config import load_config
from training.losses import Centers
from training.masking import mask_indices
from training.model import Student, build_student, build_teacher
from training.optim import apply_schedules, build_optimizer
from training.pretrain import forward_backward, optimizer_step


class OfficialBackbone(nn.Module):
    """The official ViT's parameters around copies of tcore's blocks, and its forward written out:
    patch embedding, mask token, [CLS, patches] + position table (bicubic with antialias to the
    grid), registers inserted after CLS, blocks, final norm."""

    def __init__(self, ours: nn.Module) -> None:
        super().__init__()
        official = to_official_state_dict(ours.state_dict())
        for name in ("cls_token", "pos_embed", "register_tokens", "mask_token"):
            setattr(self, name, nn.Parameter(official[name].clone()))
        self.patch_embed = copy.deepcopy(ours.patch_embed)
        self.blocks = copy.deepcopy(ours.blocks)
        self.norm = copy.deepcopy(ours.norm)

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        t = self.patch_embed(x)  # (B, h, w, D)
        h, w, dim = t.shape[1:]
        t = t.flatten(1, 2)
        if masks is not None:
            t = torch.where(masks.unsqueeze(-1), self.mask_token.to(t.dtype).unsqueeze(0), t)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1)
        pos, g = self.pos_embed, int((self.pos_embed.shape[1] - 1) ** 0.5)
        if (h, w) != (g, g):
            grid = F.interpolate(pos[:, 1:].float().reshape(1, g, g, dim).permute(0, 3, 1, 2), size=(h, w),
                                 mode="bicubic", antialias=True)
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)
        t = t + pos
        r = self.register_tokens.shape[1]
        t = torch.cat([t[:, :1], self.register_tokens.expand(b, -1, -1), t[:, 1:]], dim=1)
        t = self.norm(self.blocks(t))
        return {"cls": t[:, 0], "registers": t[:, 1:1 + r], "patches": t[:, 1 + r:].unflatten(1, (h, w))}


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    masks = torch.zeros(8, 4, dtype=torch.bool)
    masks[[1, 2, 4, 7], :2] = True
    index = {k: torch.from_numpy(v) for k, v in mask_indices(masks.numpy()).items()}
    return {"globals": torch.randn(8, 3, 32, 32, generator=gen), "locals": torch.randn(8, 3, 16, 16, generator=gen),
            "masks": masks, **index, "past": torch.randn(4, 3, 32, 32, generator=gen),
            "future": torch.randn(4, 3, 32, 32, generator=gen)}


def _step(student: Student, cfg, batch: dict[str, torch.Tensor], clip: float) -> None:
    teacher = build_teacher(student)
    optimizer = build_optimizer(student, cfg.optim, cfg.model.depth, torch.device("cpu"))
    apply_schedules(optimizer, {"lr": 1e-3, "last_layer_lr": 1e-3, "pmm_lr": 1e-4, "weight_decay": 0.04}, "fixed")
    centers = Centers(cfg.model.head_n_prototypes, 0.9, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    forward_backward(student, teacher, centers, batch, 0.04, cfg, 1.0, scaler)
    optimizer_step(student, optimizer, scaler, clip)


@pytest.mark.parametrize("clip", [0.0, 0.3])
def test_a_training_step_updates_every_parameter_as_with_the_official_parameters(clip, monkeypatch):
    norms = []
    clip_grad_norm = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norms.append(clip_grad_norm(*a, **k)))
    cfg = load_config("training/configs/tiny.yaml", ["train.precision=fp32", "model.drop_path_rate=0.0"])
    torch.manual_seed(0)
    ours = build_student(cfg.model)
    with torch.no_grad():  # non-trivial values where the two parameterisations differ
        ours.backbone.cls_pos_embed.normal_(std=0.5)
        ours.backbone.mask_token.normal_(std=0.5)
    official = Student(OfficialBackbone(ours.backbone), copy.deepcopy(ours.dino_head), copy.deepcopy(ours.pmm))
    official.train()
    before = {k: v.clone() for k, v in to_official_state_dict(ours.backbone.state_dict()).items()}
    batch = _batch()
    _step(ours, cfg, batch, clip)
    _step(official, cfg, batch, clip)

    assert not clip or min(norms) > clip  # clipping was active for every module
    ours_after = to_official_state_dict(ours.backbone.state_dict())
    official_after = official.backbone.state_dict()
    assert ours_after.keys() == official_after.keys()
    for name, value in official_after.items():
        assert not torch.equal(value, before[name]), name  # the step changed it
        assert torch.equal(ours_after[name], value), (name, (ours_after[name] - value).abs().max())
    for module in ("dino_head", "pmm"):
        for (name, a), b in zip(getattr(ours, module).state_dict().items(),
                                getattr(official, module).state_dict().values()):
            assert torch.equal(a, b), f"{module}.{name}"
