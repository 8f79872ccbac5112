"""`tcore.precision.exact_fp32`: the one guard that makes fp32 exact whatever the caller's context."""
from __future__ import annotations

import pytest
import torch

from tcore.precision import exact_fp32


@pytest.mark.parametrize("device, backend, reduced", [
    ("cuda", torch.backends.cuda.matmul, "tf32"), ("cpu", torch.backends.mkldnn.matmul, "bf16"),
    ("cuda", torch.backends.cudnn.conv, "tf32"), ("cpu", torch.backends.mkldnn.conv, "tf32"),
])
def test_reduced_precision_is_turned_off_inside_and_restored(device, backend, reduced):
    previous = backend.fp32_precision
    try:
        backend.fp32_precision = reduced
        with exact_fp32(device):
            assert backend.fp32_precision == "ieee"
        assert backend.fp32_precision == reduced
    finally:
        backend.fp32_precision = previous


def test_the_callers_autocast_is_off_inside_and_back_after():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
        with exact_fp32("cpu"):
            assert torch.equal(a @ b, a.float() @ b.float())
            with torch.autocast("cpu", dtype=torch.bfloat16):  # code inside may opt in again
                assert (a @ b).dtype == torch.bfloat16
        assert (a @ b).dtype == torch.bfloat16


def test_settings_are_restored_after_an_error():
    backend = torch.backends.mkldnn.matmul
    previous = backend.fp32_precision
    try:
        backend.fp32_precision = "bf16"
        with pytest.raises(KeyError):
            with exact_fp32(torch.device("cpu")):
                raise KeyError("boom")
        assert backend.fp32_precision == "bf16"
    finally:
        backend.fp32_precision = previous
