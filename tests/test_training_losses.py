"""Each loss term against a literal computation of the recipe's formulas on tiny tensors
(docs/training-recipe.md §7)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training import losses as L
from training.config import LossConfig
from training.masking import mask_indices


def _ce(t: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
    """-sum_k t_k log_softmax(s / tau)_k per row, the reference's formula."""
    return -(t * F.log_softmax(s / tau, dim=-1)).sum(-1)


def test_soft_cross_entropy_value_and_gradient():
    torch.manual_seed(0)
    s = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    t = torch.softmax(torch.randn(3, 11), -1)
    g = torch.randn(6)
    ours = L.soft_cross_entropy(s.float(), t, 0.1)
    ref = _ce(t.double().repeat(2, 1), s, 0.1)  # row r uses target r % 3
    assert torch.allclose(ours.double(), ref, atol=1e-4)
    s32 = s.detach().float().requires_grad_(True)
    (L.soft_cross_entropy(s32, t, 0.1) * g).sum().backward()
    (ref * g).sum().backward()
    assert torch.allclose(s32.grad.double(), s.grad, atol=1e-4)


def test_soft_cross_entropy_of_summed_targets_is_the_sum_and_chunks_do_not_matter(monkeypatch):
    torch.manual_seed(1)
    s = torch.randn(5, 7)
    t1, t2 = torch.softmax(torch.randn(5, 7), -1), torch.softmax(torch.randn(5, 7), -1)
    both = L.soft_cross_entropy(s, t1 + t2, 0.1)
    assert torch.allclose(both, _ce(t1, s, 0.1) + _ce(t2, s, 0.1), atol=1e-5)
    monkeypatch.setattr(L, "_CHUNK_ELEMENTS", 14)  # 2 rows per chunk
    assert torch.allclose(L.soft_cross_entropy(s, t1 + t2, 0.1), both, atol=1e-6)


def test_bf16_logits_are_evaluated_in_float32():
    torch.manual_seed(2)
    s = torch.randn(4, 9).bfloat16()
    t = torch.softmax(torch.randn(4, 9), -1)
    out = L.soft_cross_entropy(s, t, 0.1)
    assert out.dtype == torch.float32 and torch.allclose(out, _ce(t, s.float(), 0.1), atol=1e-5)


def test_logit_mse_value_and_gradients_into_both_sides():
    torch.manual_seed(3)
    a = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, 6, requires_grad=True)
    L.logit_mse(a, b).backward()
    a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    F.mse_loss(a2, b2).backward()
    assert torch.allclose(L.logit_mse(a, b), F.mse_loss(a, b))
    assert torch.allclose(a.grad, a2.grad) and torch.allclose(b.grad, b2.grad)


def test_koleo_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    u = x / x.norm(dim=1, keepdim=True)
    # nearest neighbours by cosine: 0 -> 2, 1 -> 2, 2 -> 0 (tie with 1: first index)
    d = torch.stack([(u[0] - u[2] + 1e-8).norm(), (u[1] - u[2] + 1e-8).norm(), (u[2] - u[0] + 1e-8).norm()])
    assert torch.allclose(L.koleo(x), -torch.log(d + 1e-8).mean())


def test_centers_are_softmax_centering_with_ema_after_the_step():
    c = L.Centers(3, 0.9, torch.device("cpu"))
    cls1, patch1 = torch.tensor([[1.0, 2, 3], [3, 2, 1]]), torch.tensor([[0.0, 0, 6]])
    cls2, patch2 = torch.tensor([[5.0, 5, 5], [1, 1, 1]]), torch.zeros(0, 3)
    c.accumulate(cls1, patch1)
    c.accumulate(cls2, patch2)  # two micro-batches of one step; the second has no masked patch
    assert torch.equal(c.dino, torch.zeros(1, 3))  # unchanged during the step
    c.update()
    assert torch.allclose(c.dino, 0.1 * (torch.tensor([2.0, 2, 2]) + torch.tensor([3.0, 3, 3])) / 2)
    assert torch.allclose(c.ibot, 0.1 * torch.tensor([[0.0, 0, 6]]))
    probs = L.teacher_probs(torch.tensor([[1.0, 2.0, 3.0]]), c.dino, 0.04)
    assert torch.allclose(probs, torch.softmax((torch.tensor([[1.0, 2.0, 3.0]]) - c.dino) / 0.04, -1))


def _weights(masks: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(mask_indices(masks.numpy())["mask_weight"])


def _reference_losses(out, t_cls_swapped, t_patch, masks, cfg):
    """The recipe's formulas (§7) written literally: 16 local terms, swapped globals, per-image iBOT weights."""
    b = t_cls_swapped.shape[0] // 2
    n_local = out["local_logits"].shape[0] // b
    norm = n_local * 2 + (2 - 1) * 2
    t = t_cls_swapped.view(2, b, -1)
    loc = sum(_ce(t[i], out["local_logits"][j * b:(j + 1) * b], 0.1).mean()
              for j in range(n_local) for i in range(2)) / norm
    glob = 2 * _ce(t_cls_swapped, out["global_logits"], 0.1).mean() / norm
    kol = sum(L.koleo(out["global_cls"][i * b:(i + 1) * b]) for i in range(2))
    w = torch.cat([torch.full((int(m.sum()),), 1.0 / max(int(m.sum()), 1)) for m in masks])
    past = (w * _ce(t_patch, out["past_logits"], 0.1)).sum() / (2 * b)
    fut = (w * _ce(t_patch, out["future_logits"], 0.1)).sum() / (2 * b)
    mse = ((out["past_logits"] - out["future_logits"]) ** 2).mean()
    total = loc + glob + 0.1 * kol + 0.8 * past + 0.8 * fut + 20 * mse
    return loc, glob, 0.1 * kol, past, fut, mse, total


def test_tcore_losses_equal_the_literal_formulas():
    torch.manual_seed(4)
    b, k, n_local, d = 3, 13, 4, 5
    masks = torch.zeros(2 * b, 4, dtype=torch.bool)
    masks[0, :2] = masks[4, 1:] = masks[5, 3] = True
    m = int(masks.sum())
    out = {"local_logits": torch.randn(n_local * b, k), "global_logits": torch.randn(2 * b, k),
           "past_logits": torch.randn(m, k), "future_logits": torch.randn(m, k), "global_cls": torch.randn(2 * b, d)}
    t_cls = torch.softmax(torch.randn(2 * b, k), -1)
    t_patch = torch.softmax(torch.randn(m, k), -1)
    terms = L.tcore_losses(out, t_cls, t_patch, _weights(masks), LossConfig())
    ref = _reference_losses(out, t_cls, t_patch, masks, LossConfig())
    for ours, theirs in zip(terms.as_dict().values(), ref):
        assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("weight", ["dino_weight", "koleo_weight", "past_ibot_weight", "future_ibot_weight",
                                    "mse_weight"])
def test_each_weight_scales_only_its_term(weight):
    torch.manual_seed(5)
    masks = torch.tensor([[True, False], [False, False], [True, True], [False, False]])
    out = {"local_logits": torch.randn(4, 7), "global_logits": torch.randn(4, 7), "past_logits": torch.randn(3, 7),
           "future_logits": torch.randn(3, 7), "global_cls": torch.randn(4, 3)}
    t_cls, t_patch = torch.softmax(torch.randn(4, 7), -1), torch.softmax(torch.randn(3, 7), -1)
    base = L.tcore_losses(out, t_cls, t_patch, _weights(masks), LossConfig())
    zero = L.tcore_losses(out, t_cls, t_patch, _weights(masks), LossConfig(**{weight: 0.0}))
    part = {"dino_weight": base.dino_local + base.dino_global, "koleo_weight": base.koleo,
            "past_ibot_weight": 0.8 * base.ibot_past, "future_ibot_weight": 0.8 * base.ibot_future,
            "mse_weight": 20 * base.mse}[weight]
    assert torch.allclose(base.total - zero.total, part, atol=1e-5)


def test_compiled_loss_kernels_give_the_same_values_and_gradients(monkeypatch):
    monkeypatch.setattr(L, "_KERNELS", dict(L._KERNELS))  # restored after the test
    torch.manual_seed(6)
    s = torch.randn(9, 12).bfloat16().requires_grad_(True)
    t = torch.softmax(torch.randn(3, 12), -1)
    a, b = torch.randn(4, 12, requires_grad=True), torch.randn(4, 12, requires_grad=True)

    def run():
        s.grad = a.grad = b.grad = None
        ce = L.soft_cross_entropy(s, t, 0.1)
        (ce * torch.arange(9)).sum().backward()
        mse = L.logit_mse(a, b)
        mse.backward()
        return [x.detach().clone() for x in (ce, s.grad, mse, a.grad, b.grad)]

    plain = run()
    L.compile_loss_kernels(backend="eager")  # the wiring; inductor's code generation runs in the GPU suite
    assert all(callable(k) and k is not p for k, p in zip(L._KERNELS.values(), L._PLAIN_KERNELS.values()))
    for x, y in zip(plain, run()):
        assert torch.equal(x, y)
