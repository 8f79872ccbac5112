"""Devices: `device=` (and `--device`) checked before any work, naming what this machine has.

    >>> resolve_device(None)        # the best available: CUDA, then Apple MPS, then the CPU
    >>> resolve_device("cuda:1")    # without a GPU 1: InvalidInputError listing the available devices

A device string torch does not parse ("gpu") or a device this machine lacks ("cuda" on a CPU-only
build) is an `InvalidInputError` (a ValueError) that names the argument, the value and the
available devices, raised before a model is loaded or a frame decoded.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import InvalidInputError, InvalidTypeError

__all__ = ["available_devices", "resolve_device"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def available_devices() -> list[str]:
    """The devices torch can use here, e.g. ["cuda:0", "cuda:1", "cpu"] or ["mps", "cpu"]."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        found.append("mps")
    return found + ["cpu"]


def _missing_reason(device: torch.device) -> str | None:
    """Why `device` cannot be used here, or None when it can."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                return f"CUDA is not available: torch {torch.__version__} is built without CUDA"
            return f"CUDA is not available: torch {torch.__version__} sees no GPU"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"there {'is' if count == 1 else 'are'} only {count} CUDA device{'s' * (count != 1)}"
        return None
    if device.type == "mps":
        return None if _mps_available() else "Apple MPS is not available"
    backend = getattr(torch, device.type, None)
    if backend is not None and hasattr(backend, "is_available") and backend.is_available():
        return None
    return f"no {device.type!r} device is available"


def resolve_device(device: Any = None, argument: str = "device") -> torch.device:
    """`device` as a `torch.device` that exists on this machine; None picks the best one.

    Args:
        device: None, a string ("cuda", "cuda:1", "mps", "cpu") or a `torch.device`.
        argument: the argument's name in errors ("device", or "--device" for the command line).

    Raises:
        InvalidInputError: not a device name, or a device this machine does not have; the message
            lists the available devices.
        InvalidTypeError: neither None, a string nor a `torch.device`.
    """
    if device is None:  # "cuda" without an index: the current device (under torchrun, each rank picks its own)
        return torch.device(available_devices()[0].partition(":")[0])
    if not isinstance(device, (str, torch.device)):
        raise InvalidTypeError(f"{argument}: expected a device name such as 'cuda' or 'cpu', or a torch.device, "
                               f"got {type(device).__name__}")
    available = ", ".join(available_devices())
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise InvalidInputError(f"{argument}={device!r}: not a device name; available here: {available} (or leave it "
                                "unset for the best one)") from None
    reason = _missing_reason(parsed)
    if reason is not None:
        raise InvalidInputError(f"{argument}={device!r}: {reason}; available here: {available} (or leave it unset for "
                                "the best one)")
    return parsed
