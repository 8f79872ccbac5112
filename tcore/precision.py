"""Exact fp32 whatever the caller's context: no autocast, no TF32 or reduced-precision matmuls.

    >>> from tcore.precision import exact_fp32
    >>> with exact_fp32(x.device):
    ...     y = model(x)      # plain IEEE fp32, even inside the caller's torch.autocast(...)

Users often run inside `torch.autocast(..., dtype=torch.bfloat16)` (SAM 2's README teaches it) or
allow TF32 globally (`torch.set_float32_matmul_precision("high")`, `allow_tf32 = True`). Both
change fp32 results by ~1e-3, enough to reorder close top-k candidates of the propagation and to
move resampled pixels off their 8-bit grid. Every code path of tcore (and `training/`) that
promises exact fp32 runs inside this one context manager.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["exact_fp32"]


def _ieee_backends(device_type: str) -> list[Any]:
    """The backend flag holders (torch >= 2.9 `fp32_precision`) that govern fp32 math on a device type."""
    if device_type == "cuda":
        names = (("cuda", "matmul"), ("cudnn", "conv"))
    elif device_type == "cpu":
        names = (("mkldnn", "matmul"), ("mkldnn", "conv"))
    else:
        return []
    holders = [getattr(getattr(torch.backends, a, None), b, None) for a, b in names]
    return [h for h in holders if h is not None and hasattr(h, "fp32_precision")]


@contextlib.contextmanager
def _ieee_precision(device_type: str) -> Iterator[None]:
    """Set every fp32 backend flag of the device type to "ieee" inside; restore the values after."""
    backends = _ieee_backends(device_type)
    previous = [b.fp32_precision for b in backends]
    try:
        for backend in backends:
            if backend.fp32_precision != "ieee":
                backend.fp32_precision = "ieee"
        yield
    finally:
        for backend, value in zip(backends, previous):
            if backend.fp32_precision != value:
                backend.fp32_precision = value


@contextlib.contextmanager
def _legacy_precision(device_type: str) -> Iterator[None]:
    """`_ieee_precision` for torch < 2.9: `allow_tf32` off (CUDA), matmul precision "highest"."""
    with contextlib.ExitStack() as stack:
        if device_type == "cuda":
            matmul = torch.backends.cuda.matmul
            previous = matmul.allow_tf32
            matmul.allow_tf32 = False
            stack.callback(setattr, matmul, "allow_tf32", previous)
            stack.enter_context(torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False))
        precision = torch.get_float32_matmul_precision()
        if precision != "highest":
            torch.set_float32_matmul_precision("highest")
            stack.callback(torch.set_float32_matmul_precision, precision)
        yield


def _autocast_available(device_type: str) -> bool:
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    return available(device_type) if available is not None else device_type in ("cuda", "cpu")


@contextlib.contextmanager
def exact_fp32(device: torch.device | str) -> Iterator[None]:
    """Run the block in plain IEEE fp32 on `device`, whatever autocast or TF32 setting is active.

    Inside: autocast is disabled for the device's type, TF32 is off for CUDA matmuls and cuDNN
    convolutions, and oneDNN's reduced-precision fp32 matmuls and convolutions are off on the CPU.
    Every setting is restored on exit (the flags are process-wide: another thread that computes
    meanwhile also sees them). Code inside may open its own autocast (an opt-in bf16 path does).

    Args:
        device: the device the block computes on (its type picks the flags).
    """
    device_type = torch.device(device).type
    with contextlib.ExitStack() as stack:
        if _autocast_available(device_type):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        if _ieee_backends(device_type) or device_type not in ("cuda", "cpu"):
            stack.enter_context(_ieee_precision(device_type))
        else:
            stack.enter_context(_legacy_precision(device_type))
        yield
