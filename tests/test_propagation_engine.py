"""The propagation engine against a literal implementation of the official protocol and its golden outputs.

The literal implementation (`benchmarks/oracles.py: literal_propagation`, shared with benchmarks/propagation.py)
builds the padded sequence of T + n_context frames exactly as the official code does
(docs/propagation-protocol.md §5–§7): dense affinities over n_context + 1 key slots, the radius mask
added to the short-term slots only, top-k over all (n_context + 1) * h * w keys, softmax over the k,
soft labels fed back.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from benchmarks.oracles import literal_propagation
from helpers import golden_engine_cases

import tcore
from tcore.propagation import Propagator, engine, propagate_labels

TOL = 1e-6


def drifting_video(frames: int, h: int, w: int, dim: int, seed: int, drift: float = 0.15) -> torch.Tensor:
    """(T, h, w, D) random unit features that drift a little from frame to frame."""
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(h, w, dim, generator=gen)]
    for _ in range(frames - 1):
        feats.append(feats[-1] + drift * torch.randn(h, w, dim, generator=gen))
    return F.normalize(torch.stack(feats), dim=-1)


def moving_video(frames: int, h: int, w: int, dim: int, seed: int, shift: int) -> torch.Tensor:
    """(T, h, w, D) unit features of a random texture sliding `shift` cells right per frame."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(h, w, dim, generator=gen)
    feats = [base.roll(shift * t, dims=1) + 0.05 * torch.randn(h, w, dim, generator=gen) for t in range(frames)]
    return F.normalize(torch.stack(feats), dim=-1)


def soft_labels(n_classes: int, h: int, w: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n_classes, h, w, generator=gen), dim=0)


def assert_same_labels(ours: torch.Tensor, reference: torch.Tensor, tol: float = TOL) -> None:
    assert ours.shape == reference.shape
    assert ours.dtype == torch.float32
    assert (ours - reference).abs().max().item() <= tol
    assert torch.equal(ours.argmax(1), reference.argmax(1))


def run_in_steps(features: torch.Tensor, labels: torch.Tensor, sizes: list[int], **params) -> torch.Tensor:
    prop = Propagator(**params)
    out, t = [prop.reset(features[0], labels)[None]], 1
    for size in sizes:
        out.append(prop.step(features[t:t + size]))
        t += size
    assert t == features.shape[0]
    return torch.cat(out)


# --- exactness against the literal padded sequence -------------------------------------------------

@pytest.mark.parametrize("grid", [(7, 7), (6, 13), (13, 6), (5, 40)])
@pytest.mark.parametrize("topk", [7, 10])
def test_engine_equals_literal_padded_sequence_before_and_after_n_context(grid, topk):
    h, w = grid
    feats, labels = drifting_video(12, h, w, 12, seed=h * w + topk), soft_labels(3, h, w, seed=1)
    params = {"topk": topk, "temperature": 0.7, "radius": 3, "n_context": 4}  # frames 1..4 padded, 5..11 not
    assert_same_labels(propagate_labels(feats, labels, **params), literal_propagation(feats, labels, **params))


def test_engine_equals_literal_with_paper_context_on_a_wide_grid():
    feats, labels = drifting_video(24, 8, 30, 16, seed=3), soft_labels(4, 8, 30, seed=4)
    params = {"topk": 7, "temperature": 0.7, "radius": 6, "n_context": 20}
    assert_same_labels(propagate_labels(feats, labels, **params), literal_propagation(feats, labels, **params))


@pytest.mark.parametrize("grid", [(9, 21), (21, 9)])
def test_engine_equals_literal_when_every_band_holds_one_line(monkeypatch, grid):
    monkeypatch.setitem(engine._BAND_QUERIES, "cpu", 1)  # one grid line per band: many bands, tight key ranges
    h, w = grid
    feats, labels = drifting_video(10, h, w, 8, seed=5), soft_labels(3, h, w, seed=6)
    params = {"topk": 7, "temperature": 0.7, "radius": 4.5, "n_context": 3}
    assert len(engine._build_geometry(h, w, 4.5, torch.device("cpu")).bands) == 21  # bands along the long axis
    assert_same_labels(propagate_labels(feats, labels, **params), literal_propagation(feats, labels, **params))


@pytest.mark.parametrize("n_context", [0, 1])
def test_engine_equals_literal_with_tiny_contexts(n_context):
    feats, labels = drifting_video(6, 6, 9, 8, seed=7), soft_labels(2, 6, 9, seed=8)
    params = {"topk": 5, "temperature": 0.7, "radius": 2, "n_context": n_context}
    assert_same_labels(propagate_labels(feats, labels, **params), literal_propagation(feats, labels, **params))


def test_radius_larger_than_the_grid_restricts_nothing():
    feats, labels = drifting_video(8, 5, 6, 8, seed=9), soft_labels(3, 5, 6, seed=10)
    params = {"topk": 7, "temperature": 0.7, "radius": 100, "n_context": 3}
    assert_same_labels(propagate_labels(feats, labels, **params), literal_propagation(feats, labels, **params))


def test_frame0_multiplicity_is_counted_and_dropping_it_changes_the_result():
    feats, labels = drifting_video(10, 8, 12, 12, seed=11), soft_labels(3, 8, 12, seed=12)
    params = {"topk": 7, "temperature": 0.7, "radius": 4, "n_context": 6}
    ours = propagate_labels(feats, labels, **params)
    assert_same_labels(ours, literal_propagation(feats, labels, **params))
    mistaken = literal_propagation(feats, labels, **params, pad_with_first=False)
    assert (ours[1:7] - mistaken[1:7]).abs().max().item() > 1e-2  # t <= n_context: the copies matter
    # at t=1 all K keys are copies of one frame-0 cell: the output is that cell's label exactly
    flat = labels.reshape(3, -1)  # (C, N)
    gap = (ours[1].reshape(3, -1)[:, :, None] - flat[:, None, :]).abs().amax(0)  # (N_query, N_key)
    assert gap.amin(1).max().item() <= 1e-6


def test_frame0_is_unrestricted_and_restricting_it_changes_the_result():
    # the texture moves 2 cells per frame: after a few frames frame 0's best match lies beyond radius 3
    feats, labels = moving_video(8, 6, 20, 12, seed=13, shift=2), soft_labels(3, 6, 20, seed=14)
    params = {"topk": 7, "temperature": 0.7, "radius": 3, "n_context": 3}
    ours = propagate_labels(feats, labels, **params)
    assert_same_labels(ours, literal_propagation(feats, labels, **params))
    mistaken = literal_propagation(feats, labels, **params, radius_on_first=True)
    assert (ours - mistaken).abs().max().item() > 1e-2


# --- golden outputs of the official engine ------------------------------------------------------------

@pytest.fixture(scope="module")
def golden_cases() -> dict:
    """{case name: (features, first labels, params, expected)}: the official engine's golden outputs."""
    return {name: (feats, labels, params, expected) for name, feats, labels, params, expected in golden_engine_cases()}


@pytest.mark.parametrize("case", ["case0", "case1", "case2"])
def test_engine_reproduces_the_official_golden_outputs(golden_cases, case):
    assert sorted(golden_cases) == ["case0", "case1", "case2"]
    feats, labels, params, expected = golden_cases[case]
    assert_same_labels(propagate_labels(feats, labels, **params), expected)


@pytest.mark.parametrize("frames_per_step", [1, 8])
def test_engine_in_steps_reproduces_the_official_golden_outputs(golden_cases, frames_per_step):
    # on the small case (a 12x17 grid in two bands; 13 steps past n_context=4: the context fills, then evicts);
    # that the step size never changes a bit is test_results_are_identical_whatever_the_frames_per_step
    feats, labels, params, expected = golden_cases["case2"]
    n = feats.shape[0] - 1
    sizes = [frames_per_step] * (n // frames_per_step) + ([n % frames_per_step] if n % frames_per_step else [])
    assert_same_labels(run_in_steps(feats, labels, sizes, **params), expected)


# --- streaming -------------------------------------------------------------------------------------

def test_results_are_identical_whatever_the_frames_per_step():
    feats, labels = drifting_video(30, 6, 25, 8, seed=15), soft_labels(3, 6, 25, seed=16)
    params = {"topk": 7, "temperature": 0.7, "radius": 4, "n_context": 5}
    one = run_in_steps(feats, labels, [1] * 29, **params)
    assert torch.equal(one, run_in_steps(feats, labels, [8, 8, 8, 5], **params))
    assert torch.equal(one, run_in_steps(feats, labels, [3, 0, 11, 1, 14], **params))
    assert torch.equal(one, propagate_labels(feats, labels, **params))


def test_memory_held_does_not_grow_with_the_number_of_steps():
    feats, labels = drifting_video(41, 5, 8, 8, seed=17), soft_labels(2, 5, 8, seed=18)
    prop = Propagator(topk=5, radius=3, n_context=4)
    prop.reset(feats[0], labels)
    held = []
    for t in range(1, 41):
        prop.step(feats[t:t + 1])
        held.append(prop.nbytes)
    frame_bytes = 5 * 8 * (8 + 2) * 4  # one frame's features and labels in fp32
    assert held[3] == held[-1]  # constant once the context is full
    assert held[-1] - held[0] == 3 * frame_bytes  # exactly n_context frames of context, not 40
    assert prop.frame_index == 41


def test_state_never_keeps_the_callers_step_tensor_alive():
    feats, labels = drifting_video(17, 5, 8, 8, seed=19), soft_labels(2, 5, 8, seed=20)
    prop = Propagator(topk=5, radius=3, n_context=2)
    prop.reset(feats[0], labels)
    after_reset = prop.nbytes  # frame 0 and the grid's geometry
    prop.step(feats[1:17].clone())  # a 16-frame tensor: only the last 2 frames may be held, as copies
    assert prop.nbytes == after_reset + 2 * 5 * 8 * (8 + 2) * 4  # 2 frames of (h*w, D) features + (h*w, C) labels


# --- inputs and errors -----------------------------------------------------------------------------

def test_reset_returns_frame0_labels_as_fp32_and_step_returns_k_frames():
    feats, labels = drifting_video(4, 5, 7, 8, seed=21), soft_labels(3, 5, 7, seed=22).double()
    prop = Propagator(topk=5, radius=3, n_context=2)
    first = prop.reset(feats[0].double(), labels)
    assert first.dtype == torch.float32 and first.shape == (3, 5, 7)
    assert torch.equal(first, labels.float())
    out = prop.step(feats[1:4].double())
    assert out.shape == (3, 3, 5, 7) and out.dtype == torch.float32
    assert_same_labels(torch.cat([first[None], out]), propagate_labels(feats, labels.float(), topk=5, radius=3,
                                                                       n_context=2), tol=1e-6)


def test_step_before_reset_says_to_call_reset():
    with pytest.raises(RuntimeError, match=r"reset\("):
        Propagator().step(torch.zeros(1, 4, 4, 8))


@pytest.mark.parametrize("kwargs, match", [
    ({"topk": 0}, "topk"), ({"topk": 2.5}, "topk"), ({"topk": True}, "topk"),
    ({"temperature": 0}, "temperature"), ({"radius": -1}, "radius"), ({"n_context": -1}, "n_context"),
])
def test_bad_hyper_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Propagator(**kwargs)


def test_bad_first_frame_inputs_get_clear_errors():
    feats, labels = drifting_video(1, 4, 5, 8, seed=23)[0], soft_labels(2, 4, 5, seed=24)
    prop = Propagator(topk=5, radius=3)
    with pytest.raises(TypeError, match="first_features"):
        prop.reset(feats.numpy(), labels)
    with pytest.raises(ValueError, match=r"first_features: expected shape \(h, w, D\)"):
        prop.reset(feats[None], labels)
    with pytest.raises(ValueError, match="floating-point"):
        prop.reset(feats.long(), labels)
    with pytest.raises(ValueError, match=r"first_labels: expected shape \(C, 4, 5\)"):
        prop.reset(feats, labels.transpose(1, 2))
    with pytest.raises(ValueError, match="L2-normalised"):
        prop.reset(feats * 3, labels)
    with pytest.raises(ValueError, match="NaN"):
        prop.reset(feats, labels * float("nan"))
    with pytest.raises(ValueError, match="topk=21 exceeds the 4x5=20 keys"):
        Propagator(topk=21).reset(feats, labels)


def test_bad_step_inputs_get_clear_errors():
    feats, labels = drifting_video(3, 4, 5, 8, seed=25), soft_labels(2, 4, 5, seed=26)
    prop = Propagator(topk=5, radius=3)
    prop.reset(feats[0], labels)
    with pytest.raises(ValueError, match=r"expected shape \(k, h, w, D\).*\(4, 5, 8\)"):
        prop.step(feats[1])
    with pytest.raises(ValueError, match=r"grid \(5, 4\) differs from frame 0's \(4, 5\)"):
        prop.step(feats[1:].transpose(1, 2))
    with pytest.raises(ValueError, match="D=4 differs from frame 0's D=8"):
        prop.step(F.normalize(feats[1:, ..., :4], dim=-1))
    with pytest.raises(ValueError, match="L2-normalised"):
        prop.step(feats[1:] * float("nan"))
    with pytest.raises(ValueError, match="floating-point"):
        prop.step(feats[1:].to(torch.int32))
    assert prop.frame_index == 1  # failed steps leave the state untouched
    assert prop.step(feats[1:]).shape == (2, 2, 4, 5)


def test_norm_check_of_step_can_be_turned_off_by_callers_that_normalise_themselves():
    feats, labels = drifting_video(3, 4, 5, 8, seed=41), soft_labels(2, 4, 5, seed=42)
    checked, unchecked = Propagator(topk=5), Propagator(topk=5, check_norms=False)
    checked.reset(feats[0], labels)
    unchecked.reset(feats[0], labels)
    with pytest.raises(ValueError, match="L2-normalised"):
        checked.step(2 * feats[1:])
    assert unchecked.step(2 * feats[1:]).shape == (2, 2, 4, 5)  # trusted: no device read-back
    with pytest.raises(ValueError, match="L2-normalised"):
        unchecked.reset(2 * feats[0], labels)  # the first frame is always checked


def test_propagate_labels_rejects_an_empty_video():
    with pytest.raises(ValueError, match="T >= 1"):
        propagate_labels(torch.zeros(0, 4, 5, 8), soft_labels(2, 4, 5, seed=0))


def test_single_frame_video_returns_its_labels():
    feats, labels = drifting_video(1, 4, 5, 8, seed=27), soft_labels(2, 4, 5, seed=28)
    out = propagate_labels(feats, labels, topk=5)
    assert out.shape == (1, 2, 4, 5) and torch.equal(out[0], labels)


def test_public_names_are_exported_lazily_from_tcore():
    assert tcore.Propagator is Propagator and tcore.propagate_labels is propagate_labels


def test_engine_results_ignore_float32_matmul_precision_medium():
    feats, labels = drifting_video(6, 6, 20, 384, seed=31), soft_labels(3, 6, 20, seed=32)  # D=384 uses oneDNN
    params = {"topk": 7, "temperature": 0.7, "radius": 6, "n_context": 3}
    exact = propagate_labels(feats, labels, **params)
    q, k = feats[1].reshape(-1, 384), feats[0].reshape(-1, 384)
    ieee, previous = q @ k.T, torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        if torch.equal(q @ k.T, ieee):
            pytest.skip("fp32 matmuls on this CPU are unchanged by 'medium': nothing to guard against")
        assert torch.equal(propagate_labels(feats, labels, **params), exact)
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_engine_on_cuda_equals_the_literal_implementation():
    feats, labels = drifting_video(24, 8, 30, 16, seed=29), soft_labels(4, 8, 30, seed=30)
    params = {"topk": 7, "temperature": 0.7, "radius": 6, "n_context": 20}
    ours = propagate_labels(feats.cuda(), labels.cuda(), **params)
    assert ours.device.type == "cuda"
    assert_same_labels(ours.cpu(), literal_propagation(feats, labels, **params))
