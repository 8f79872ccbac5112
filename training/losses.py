"""Loss terms of a T-CoRe step (docs/training-recipe.md §7), computed in float32 from low-precision logits.

The soft-target cross-entropy `sum_k t_k * (-log_softmax(s / tau)_k)` is written as
`sum(t) * logsumexp(s / tau) - <t, s> / tau` and evaluated in row chunks by a custom autograd
function, so neither the float32 copy of the logits nor the log-softmax is kept for backward
(the reference keeps several 65,536-wide float tensors per row). Same for the MSE between the
past and future logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from training.config import LossConfig

__all__ = ["soft_cross_entropy", "logit_mse", "koleo", "teacher_probs", "Centers", "LossTerms", "tcore_losses",
           "compile_loss_kernels"]

_CHUNK_ELEMENTS = 1 << 25  # rows per chunk = this // K (128 MiB of float32 per temporary)


def _chunks(rows: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


# The per-chunk maths, as plain functions so that `compile_loss_kernels` can fuse each into one
# kernel (reading the logits once) when training runs with train.compile=true.

def _ce_forward(logits: torch.Tensor, targets: torch.Tensor, temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, K) logits and targets -> per-row loss (r,) and logsumexp (r,), float32."""
    z = logits.float() / temp
    lse = torch.logsumexp(z, dim=1)
    return targets.sum(dim=1) * lse - (targets * z).sum(dim=1), lse


def _ce_backward(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor,
                 temp: float) -> torch.Tensor:
    """d loss / d logits of a chunk: (softmax(z) * sum(t) - t) * grad / temp, in the logits' dtype."""
    p = torch.exp(logits.float() / temp - lse[:, None])
    return ((p * targets.sum(dim=1, keepdim=True) - targets) * (grad[:, None] / temp)).to(logits.dtype)


def _squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).sum(dtype=torch.float64)


def _squared_error_grad(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return ((a.float() - b.float()) * scale).to(a.dtype)


_PLAIN_KERNELS = {"ce_forward": _ce_forward, "ce_backward": _ce_backward, "squared_error": _squared_error,
                  "squared_error_grad": _squared_error_grad}
_KERNELS = dict(_PLAIN_KERNELS)


def compile_loss_kernels(backend: str = "inductor") -> None:
    """Replace the per-chunk loss maths by torch.compile'd kernels (same maths, fewer memory passes)."""
    for name, fn in _PLAIN_KERNELS.items():
        _KERNELS[name] = torch.compile(fn, dynamic=True, backend=backend)


def _targets(targets: torch.Tensor, i: int, j: int, period: int) -> torch.Tensor:
    """Target rows of logits rows [i, j): row r uses target r % period (a view when no wrap is needed)."""
    if i // period == (j - 1) // period:
        return targets[i % period:(j - 1) % period + 1]
    return targets[torch.arange(i, j, device=targets.device) % period]


class _SoftCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temp: float) -> torch.Tensor:
        rows, width = logits.shape
        period = targets.shape[0]
        losses = logits.new_empty(rows, dtype=torch.float32)
        lse = logits.new_empty(rows, dtype=torch.float32)
        for i, j in _chunks(rows, width):
            losses[i:j], lse[i:j] = _KERNELS["ce_forward"](logits[i:j], _targets(targets, i, j, period), temp)
        ctx.save_for_backward(logits, targets, lse)
        ctx.temp = temp
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets, lse = ctx.saved_tensors
        rows, width = logits.shape
        period = targets.shape[0]
        grad = torch.empty_like(logits)
        for i, j in _chunks(rows, width):
            grad[i:j] = _KERNELS["ce_backward"](logits[i:j], _targets(targets, i, j, period), lse[i:j],
                                                grad_losses[i:j], ctx.temp)
        return grad, None, None


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temp: float) -> torch.Tensor:
    """Per-row cross-entropy of soft targets against student logits at temperature `temp`.

    Args:
        logits: (R, K) student logits, any float dtype (gradient flows here).
        targets: (P, K) float32 target weights (constants); row r of `logits` uses target r % P, so
            one set of targets serves several crops stacked crop-major. Rows need not sum to 1
            (a sum of two distributions gives the sum of the two cross-entropies).
        temp: student temperature.

    Returns:
        (R,) float32: sum(t) * logsumexp(s / temp) - <t, s / temp>.
    """
    if logits.ndim != 2 or targets.ndim != 2 or logits.shape[1] != targets.shape[1] or logits.shape[0] % max(
            targets.shape[0], 1):
        raise ValueError(f"soft_cross_entropy: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
                         "must be (R, K) and (P, K) with R a multiple of P")
    if logits.shape[0] == 0:
        return logits.new_zeros(0, dtype=torch.float32) + 0 * logits.sum()
    return _SoftCrossEntropy.apply(logits, targets.detach().float(), temp)


class _LogitMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64, device=a.device)
        for i, j in _chunks(a.shape[0], a.shape[1]):
            total += _KERNELS["squared_error"](a[i:j], b[i:j])
        ctx.save_for_backward(a, b)
        return (total / a.numel()).float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors
        grad_a = torch.empty_like(a)
        scale = grad * (2.0 / a.numel())
        for i, j in _chunks(a.shape[0], a.shape[1]):
            grad_a[i:j] = _KERNELS["squared_error_grad"](a[i:j], b[i:j], scale)
        return grad_a, -grad_a


def logit_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean((a - b)^2) over all elements in float32, gradient into both (nothing detached).

    Args:
        a, b: (M, K) logits.
    """
    if a.shape != b.shape:
        raise ValueError(f"logit_mse: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        return 0 * (a.sum() + b.sum()).float()
    return _LogitMSE.apply(a, b)


def koleo(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo: -mean(log(distance to the nearest neighbour)) of L2-normalised rows.

    Args:
        x: (n, D) float, n >= 2.
    """
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()                     # (n, n)
        dots.fill_diagonal_(-1)
        nearest = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
    return -torch.log(distances + eps).mean()


def teacher_probs(logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """softmax((z - c) / temp) in float32. logits (R, K), center (1, K) -> (R, K)."""
    return torch.softmax((logits.float() - center) / temp, dim=-1)


class Centers:
    """The DINO and iBOT softmax centres: EMA of the teacher's mean logits, updated once per step.

    Micro-batches (and ranks) of a step all use the centres as they stood before the step; the
    mean of their batch means enters the EMA after the step (`update`).
    """

    def __init__(self, n_prototypes: int, momentum: float, device: torch.device) -> None:
        self.momentum = momentum
        self.dino = torch.zeros(1, n_prototypes, device=device)
        self.ibot = torch.zeros(1, n_prototypes, device=device)
        self._sums = torch.zeros(2, n_prototypes, device=device)
        self._counts = torch.zeros(2, 1, device=device)

    @torch.no_grad()
    def accumulate(self, cls_logits: torch.Tensor, patch_logits: torch.Tensor) -> None:
        """Add one micro-batch's teacher logits: (2b, K) CLS and (M, K) masked patches."""
        self._sums[0] += cls_logits.float().mean(dim=0)
        self._counts[0] += 1
        if patch_logits.shape[0]:
            self._sums[1] += patch_logits.float().mean(dim=0)
            self._counts[1] += 1

    @torch.no_grad()
    def update(self, all_reduce_sum: Callable[[torch.Tensor], Any] | None = None) -> None:
        """Apply the step's mean to the EMAs; `all_reduce_sum(tensor)` sums over ranks in place."""
        stats = torch.cat([self._sums, self._counts], dim=1)  # (2, K + 1)
        if all_reduce_sum is not None:
            all_reduce_sum(stats)
        means, counts = stats[:, :-1] / stats[:, -1:].clamp(min=1), stats[:, -1:]
        for k, center in enumerate((self.dino, self.ibot)):  # no host sync: a step without patches keeps c
            updated = self.momentum * center + (1 - self.momentum) * means[k:k + 1]
            center.copy_(torch.where(counts[k] > 0, updated, center))
        self._sums.zero_()
        self._counts.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"dino": self.dino.cpu(), "ibot": self.ibot.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.dino.copy_(state["dino"])
        self.ibot.copy_(state["ibot"])


@dataclass(frozen=True)
class LossTerms:
    """The step's loss terms (float32 scalars); `total` is what is back-propagated."""

    dino_local: torch.Tensor
    dino_global: torch.Tensor
    koleo: torch.Tensor
    ibot_past: torch.Tensor
    ibot_future: torch.Tensor
    mse: torch.Tensor
    total: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def tcore_losses(student: dict[str, torch.Tensor], cls_targets: torch.Tensor, patch_targets: torch.Tensor,
                 mask_weight: torch.Tensor, cfg: LossConfig) -> LossTerms:
    """All loss terms of one micro-batch (docs/training-recipe.md §7).

    Args:
        student: `Student.forward`'s dict (local/global/past/future logits, global CLS).
        cls_targets: (2b, K) teacher probabilities, already crop-swapped (row r = the other crop of
            the sample of student row r).
        patch_targets: (M, K) teacher probabilities at the masked patches.
        mask_weight: (M,) per masked patch, 1 / (masked patches of its image).
        cfg: loss weights and temperatures.
    """
    two_b = cls_targets.shape[0]
    b = two_b // 2
    n_local = student["local_logits"].shape[0] // b
    normaliser = 2 * n_local + 2  # DINO terms: 2 teacher crops x L locals + 2 swapped global pairs
    tau = cfg.student_temp
    both = cls_targets.view(2, b, -1).sum(dim=0)  # (b, K): the two teacher crops, summed
    dino_local = soft_cross_entropy(student["local_logits"], both, tau).sum() / (b * normaliser)
    dino_global = 2 * soft_cross_entropy(student["global_logits"], cls_targets, tau).mean() / normaliser
    koleo_term = sum(koleo(c) for c in student["global_cls"].chunk(2))
    weights = mask_weight.float()
    ibot_past = (soft_cross_entropy(student["past_logits"], patch_targets, tau) * weights).sum() / two_b
    ibot_future = (soft_cross_entropy(student["future_logits"], patch_targets, tau) * weights).sum() / two_b
    mse = logit_mse(student["past_logits"], student["future_logits"])
    total = (cfg.dino_weight * (dino_local + dino_global) + cfg.koleo_weight * koleo_term
             + cfg.past_ibot_weight * ibot_past + cfg.future_ibot_weight * ibot_future + cfg.mse_weight * mse)
    return LossTerms(dino_local, dino_global, cfg.koleo_weight * koleo_term, ibot_past, ibot_future, mse, total)
