"""On a CUDA device: the official golden outputs, exact fp32 under a global TF32 setting, CPU = GPU.

Every test here needs a GPU and skips without one (`pytest -k cuda` selects them with the CUDA
tests of other modules). `benchmarks/gpu_suite.sh` runs them first on the GPU machine.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import golden_engine_cases, golden_inputs, shared_path
from safetensors.torch import load_file

import tcore
from tcore.propagation import labels as L
from tcore.propagation import propagate_labels
from tcore.propagation.encoder import FrameEncoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@contextlib.contextmanager
def tf32_allowed_globally():
    """What many training scripts do: TF32 for every fp32 matmul and convolution."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        torch.set_float32_matmul_precision(precision)


def test_cuda_engine_reproduces_the_official_golden_outputs_even_with_tf32_allowed_globally():
    cases = list(golden_engine_cases())
    assert len(cases) == 3
    with tf32_allowed_globally():
        for name, feats, labels, params, expected in cases:
            ours = propagate_labels(feats.cuda(), labels.cuda(), **params).cpu()
            assert (ours - expected).abs().max().item() <= 1e-6, name
            assert torch.equal(ours.argmax(1), expected.argmax(1)), name


def test_cuda_tf32_would_change_the_engine_scores_so_the_guard_matters():
    """Without the guard, TF32 cosines differ from fp32 ones by far more than the 1e-6 tolerance."""
    _, feats, *_ = next(golden_engine_cases())
    q, k = feats[1].reshape(-1, feats.shape[-1]).cuda(), feats[0].reshape(-1, feats.shape[-1]).cuda()
    exact = (q.double() @ k.double().T).float()
    with tf32_allowed_globally():
        reduced = q @ k.T
    assert (reduced - exact).abs().max().item() > 1e-5
    assert (q @ k.T - exact).abs().max().item() < 1e-6  # TF32 off again outside the block


@pytest.mark.parametrize("size", [(224, 224), (480, 880), (320, 480)])
def test_cuda_official_tiny_vit_outputs_reproduced(size):
    gold = load_file(str(shared_path("golden", "vit_tiny_official_outputs.safetensors")))
    model = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2,
                                pretrained=shared_path("golden", "vit_tiny_official.pth")).cuda()
    h, w = size
    x = torch.from_numpy(golden_inputs().pattern_image(h, w))[None].cuda()
    with torch.no_grad():
        tokens = model.patch_tokens(x).cpu()
    torch.testing.assert_close(tokens, gold[f"patches_{h}x{w}"], rtol=0, atol=1e-5)


def _frames(t: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """Smooth random uint8 RGB frames (T, H, W, 3) drifting over time."""
    gen = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=gen), size=(h, w), mode="bilinear")[0]
    clip = [(base.roll(2 * i, dims=2) * 255).round().byte().permute(1, 2, 0).numpy() for i in range(t)]
    return clip


def test_cuda_fp32_features_equal_the_cpus_with_tf32_allowed_globally(tiny_backbone):
    frames = _frames(3, 96, 160, seed=0)
    cpu = FrameEncoder(tiny_backbone, (96, 160), torch.device("cpu"))(frames)
    gpu_model = tiny_backbone.cuda()
    with tf32_allowed_globally():
        gpu = FrameEncoder(gpu_model, (96, 160), torch.device("cuda"))(frames).cpu()
        assert torch.backends.cuda.matmul.allow_tf32  # the caller's setting is restored
    assert (gpu - cpu).abs().max().item() <= 1e-5


@pytest.mark.parametrize("output_resize, out_size", [("floor", (480, 854)), ("pil", (720, 1280)),
                                                     ("floor", (448, 880))])
def test_cuda_decode_ids_equals_the_cpu_decode(output_resize, out_size):
    gen = torch.Generator().manual_seed(1)
    soft = torch.softmax(4 * torch.randn(4, 28, 55, generator=gen), dim=0)
    classes = np.array([0, 3, 7, 200], dtype=np.uint8)
    work = (448, 880)
    cpu = L.decode_ids(soft, classes, work, out_size, output_resize)
    gpu = L.decode_ids(soft.cuda(), classes, work, out_size, output_resize)
    assert gpu.dtype == np.uint8 and gpu.shape == out_size
    np.testing.assert_array_equal(gpu, cpu)


def test_cuda_propagate_masks_equals_the_cpu_run(tiny_backbone):
    frames = np.stack(_frames(12, 96, 160, seed=2))
    first = np.zeros((96, 160), dtype=np.uint8)
    first[20:60, 30:90] = 1
    first[50:90, 100:150] = 2
    kwargs = {"model": tiny_backbone, "size": (96, 160), "progress": False}
    cpu = tcore.propagate_masks(frames, first, device="cpu", **kwargs)
    gpu = tcore.propagate_masks(frames, first, device="cuda", **kwargs)
    assert gpu.shape == cpu.shape == (12, 96, 160)
    assert (gpu == cpu).mean() >= 0.9999  # fp32 rounding may flip an exact near-tie, nothing more


def test_cuda_engine_memory_does_not_grow_with_the_video():
    gen = torch.Generator().manual_seed(3)
    base = F.normalize(torch.randn(30, 55, 64, generator=gen), dim=-1).cuda()
    prop = tcore.Propagator()
    prop.reset(base, torch.softmax(torch.randn(3, 30, 55, generator=gen), 0).cuda())
    peaks = []
    for _ in range(4):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(5):
            noisy = F.normalize(base + 0.1 * torch.randn(8, 30, 55, 64, device="cuda"), dim=-1)
            prop.step(noisy)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
    assert max(peaks[1:]) <= 1.05 * peaks[1]


def test_cuda_streamed_masks_soft_labels_and_keypoints_equal_the_array_results(tiny_backbone):
    """The GPU pipeline hands results out one chunk late: every frame must still come, in order."""
    frames = np.stack(_frames(19, 64, 96, seed=4))
    first = np.zeros((64, 96), dtype=np.uint8)
    first[10:40, 20:60] = 3
    kwargs = {"model": tiny_backbone.cuda(), "size": (64, 96), "progress": False, "device": "cuda",
              "batch_size": 4}
    result = tcore.propagate_masks(frames, first, soft=True, **kwargs)
    streamed = list(tcore.iter_masks(frames, first, **kwargs))
    assert [t for t, _ in streamed] == list(range(19))
    assert all(np.array_equal(m, result.masks[t]) for t, m in streamed)
    assert result.soft.shape == (19, 2, 4, 6) and isinstance(result.soft, np.ndarray)
    kps = np.array([[30.0, 20.0], [70.0, 50.0]])
    gpu_xy, gpu_vis = tcore.propagate_keypoints(frames, kps, **kwargs)
    cpu_xy, cpu_vis = tcore.propagate_keypoints(frames, kps, **{**kwargs, "model": tiny_backbone.cpu(),
                                                                 "device": "cpu"})
    assert gpu_xy.shape == (19, 2, 2) and np.array_equal(gpu_vis, cpu_vis)
    # The Gaussian's taps are symmetric, so the top-5 cells hold exact ties, which CUDA's and the
    # CPU's topk break differently (seen on an H100: 0.41 px apart at frame 0 already); within a pixel.
    np.testing.assert_allclose(gpu_xy, cpu_xy, atol=1.0)
