"""DINO head, Patch Matching Module, student/teacher (docs/training-recipe.md §5–§6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.batch import Batch
from training.config import ModelConfig, load_config
from training.losses import Centers, tcore_losses
from training.masking import mask_indices
from training.model import (DINOHead, PatchMatchingModule, build_student, build_teacher, compile_models,
                            teacher_pairs, teacher_targets, update_teacher)


def test_official_head_and_pmm_sizes_and_names():
    head = DINOHead(384, 65536)
    assert sum(p.numel() for p in head.parameters()) == 22_352_128
    assert [n for n, _ in head.named_parameters()] == [
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
        "last_layer.weight_v", "last_layer.weight_g"]
    assert torch.equal(head.last_layer.weight_g, torch.ones(65536, 1))
    pmm = PatchMatchingModule(384)
    assert sum(p.numel() for p in pmm.parameters()) == 1_332_864
    assert sum(p.numel() for p in PatchMatchingModule(768).parameters()) == 5_319_936
    names = {n for n, _ in pmm.named_parameters()}
    assert {"decoder.0.auxiliary_cross_attn.in_proj_weight", "decoder.0.auxiliary_cross_attn.in_proj_bias",
            "decoder.0.auxiliary_cross_attn.out_proj.weight", "decoder.0.auxiliary_self_attn.out_proj.bias",
            "decoder.0.auxiliary_layer_norm3.weight", "decoder.0.auxiliary_linear.weight"} <= names


def test_head_is_cosine_times_g():
    torch.manual_seed(0)
    head = DINOHead(8, 5, hidden_dim=6, bottleneck_dim=4)
    with torch.no_grad():
        head.last_layer.weight_g.mul_(3)
    x = torch.randn(2, 8)
    z = F.normalize(head.mlp(x), dim=-1)
    v = head.last_layer.weight_v
    assert torch.allclose(head(x), 3 * z @ F.normalize(v, dim=-1).t(), atol=1e-6)


def test_pmm_block_equals_the_reference_layout_with_torch_mha():
    """Cross-MHA -> LN1(4 c + q) -> self-MHA -> LN2(s + c) -> LN3(Linear(s) + s), with nn.MultiheadAttention."""
    torch.manual_seed(1)
    d, heads = 16, 4
    pmm = PatchMatchingModule(d, heads, num_blocks=1, branch_scale=4.0)
    blk = pmm.decoder[0]
    cross, self_attn = (nn.MultiheadAttention(d, heads, batch_first=True) for _ in range(2))
    for mha, ours in ((cross, blk.auxiliary_cross_attn), (self_attn, blk.auxiliary_self_attn)):
        mha.load_state_dict(ours.state_dict())  # the same parameter names as nn.MultiheadAttention
    aux, q = torch.randn(2, 9, d), torch.randn(2, 9, d)
    c = blk.auxiliary_layer_norm1(4 * cross(q, aux, aux)[0] + q)
    s = blk.auxiliary_layer_norm2(self_attn(c, c, c)[0] + c)
    ref = blk.auxiliary_layer_norm3(blk.auxiliary_linear(s) + s)
    assert torch.allclose(pmm(aux, q), ref, atol=1e-5)


def test_pmm_with_several_blocks_chains_them():
    torch.manual_seed(2)
    pmm = PatchMatchingModule(16, 2, num_blocks=3)
    aux, q = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    out = q
    for block in pmm.decoder:
        out = block(aux, out)
    assert torch.allclose(pmm(aux, q), out) and out.shape == q.shape


def _batch(cfg, b=4, seed=0):
    g, l = cfg.augment.global_size, cfg.augment.local_size
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(2 * b, (g // 16) ** 2, dtype=torch.bool)
    masks[[0, 3, 5, 6], 0] = True
    masks[3, 2] = True
    index = {k: torch.from_numpy(v) for k, v in mask_indices(masks.numpy()).items()}
    n = len(index["aux_rows"])
    return Batch(globals=torch.randn(2 * b, 3, g, g, generator=gen),
                 locals=torch.randn(cfg.augment.n_local_crops * b, 3, l, l, generator=gen), masks=masks, **index,
                 past=torch.randn(n, 3, g, g, generator=gen), future=torch.randn(n, 3, g, g, generator=gen))


def test_student_forward_backward_gives_every_student_parameter_a_gradient_and_the_teacher_none():
    cfg = load_config("training/configs/tiny.yaml")
    torch.manual_seed(0)
    student = build_student(cfg.model)
    teacher = build_teacher(student)
    batch = _batch(cfg)
    centers = Centers(cfg.model.head_n_prototypes, 0.9, torch.device("cpu"))
    cls_t, patch_t = teacher_targets(teacher, batch.globals, batch.mask_index, centers, 0.04)
    out = student(batch)
    m = int(batch.masks.sum())
    assert out["past_logits"].shape == out["future_logits"].shape == patch_t.shape == (m, 256)
    assert out["local_logits"].shape == (2 * 4, 256) and cls_t.shape == out["global_logits"].shape == (8, 256)
    tcore_losses(out, cls_t, patch_t, batch.mask_weight, cfg.loss).total.backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_teacher_targets_are_crop_swapped_and_gathered_at_the_masks():
    cfg = load_config("training/configs/tiny.yaml")
    torch.manual_seed(0)
    teacher = build_teacher(build_student(cfg.model))
    batch = _batch(cfg)
    centers = Centers(cfg.model.head_n_prototypes, 0.9, torch.device("cpu"))
    cls_t, patch_t = teacher_targets(teacher, batch.globals, batch.mask_index, centers, 0.05)
    with torch.no_grad():
        out = teacher["backbone"](batch.globals)
        logits = teacher["dino_head"](out["cls"])
        patches = out["patches"].flatten(1, 2)
        expected_patches = torch.stack([patches[r, p] for r in range(8) for p in range(4) if batch.masks[r, p]])
        patch_logits = teacher["dino_head"](expected_patches)
    # student crop 0 <- teacher crop 1, and the other way round
    assert torch.allclose(cls_t[:4], torch.softmax(logits[4:] / 0.05, -1), atol=1e-5)
    assert torch.allclose(cls_t[4:], torch.softmax(logits[:4] / 0.05, -1), atol=1e-5)
    assert torch.allclose(patch_t, torch.softmax(patch_logits / 0.05, -1), atol=1e-5)


def test_ema_update_rule():
    torch.manual_seed(3)
    student = build_student(ModelConfig(embed_dim=32, depth=1, num_heads=2, head_hidden_dim=16,
                                        head_bottleneck_dim=8, head_n_prototypes=10, pmm_num_heads=2))
    teacher = build_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in teacher.parameters()]
    t_params, s_params = teacher_pairs(student, teacher)
    update_teacher(t_params, s_params, 0.99)
    for t_old, t_new, s in zip(before, t_params, s_params):
        assert torch.allclose(t_new, 0.99 * t_old + 0.01 * s, atol=1e-6)
    assert len(t_params) == sum(1 for _ in teacher.parameters())  # backbone + head, not the PMM


def test_student_reconstructions_are_gathered_at_the_masked_patches():
    """Row m of past_logits is the head of the PMM output at the m-th masked (row, patch), in row-major order."""
    cfg = load_config("training/configs/tiny.yaml", ["model.drop_path_rate=0.0"])
    torch.manual_seed(0)
    student = build_student(cfg.model).eval()
    batch = _batch(cfg)
    with torch.no_grad():
        out = student(batch)
        aux = student.backbone(torch.cat([batch.past, batch.future]))["patches"].flatten(1, 2)
        q = student.backbone(batch.globals, batch.masks)["patches"].flatten(1, 2)
        rows = batch.aux_rows.tolist()
        expected = []
        for i, r in enumerate(rows):
            rec = student.pmm(aux[i:i + 1], q[r:r + 1])[0]  # past view of row r
            expected += [student.dino_head(rec[p:p + 1])[0] for p in range(4) if batch.masks[r, p]]
    assert torch.allclose(out["past_logits"], torch.stack(expected), atol=1e-5)


def test_compiled_models_keep_names_and_outputs():
    """train.compile compiles in place: same state_dict keys (checkpoints stay loadable), same outputs."""
    cfg = load_config("training/configs/tiny.yaml", ["model.drop_path_rate=0.0"])
    torch.manual_seed(0)
    student = build_student(cfg.model).eval()
    teacher = build_teacher(student)
    batch = _batch(cfg)
    with torch.no_grad():
        before = student(batch)["past_logits"]
    keys = list(student.state_dict()) + list(teacher.state_dict())
    compile_models(student, teacher, backend="eager")  # the graph capture; inductor codegen is a GPU-suite part
    assert list(student.state_dict()) + list(teacher.state_dict()) == keys
    with torch.no_grad():
        assert torch.allclose(student(batch)["past_logits"], before, atol=1e-6)
