"""PropagationSession: masks added and corrected after a run, re-propagated from the features kept.

The contract: after any sequence of add_mask / remove_object / propagate calls, every frame a
forward stream yields equals that frame of one fresh `propagate_masks(video, session.annotations)`,
every frame a reverse stream yields equals that frame of the same call on the time-reversed video,
soft labels included, and the frames each stream yields follow the rule "the nearer annotated
frame decides, ties forward" (once a reverse stream has run). The references below are computed
by `propagate_masks` itself, independently of the session.
"""
from __future__ import annotations

import bisect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tcore
from tcore.demo import make_demo_clip
from tcore.propagation import Propagator
from tcore.propagation.encoder import FrameEncoder

SMALL = (128, 192)  # an 8x12 grid
T = 14


@pytest.fixture(scope="module")
def clip():
    return make_demo_clip(n_frames=T, size=SMALL, seed=3)


def session(frames, tiny, **kw) -> tcore.PropagationSession:
    return tcore.PropagationSession(frames, model=tiny, size=SMALL, progress=False, **kw)


def fresh(frames, masks, tiny, reverse=False):
    """{t: (mask, soft)} of one propagate_masks call (on the time-reversed video with `reverse`)."""
    if reverse:
        n = len(frames)
        out = tcore.propagate_masks(frames[::-1].copy(), {n - 1 - t: m for t, m in masks.items()}, model=tiny,
                                    size=SMALL, progress=False, soft=True)
        return {n - 1 - t: (out.masks[t], out.soft[t]) for t in range(n)}
    out = tcore.propagate_masks(frames, masks, model=tiny, size=SMALL, progress=False, soft=True)
    return {t: (out.masks[t], out.soft[t]) for t in range(len(frames))}


def nearer_decides(t: int, annotated: list[int], backward: bool) -> str:
    """The documented rule, written out: which direction decides frame t ("forward"/"backward")."""
    i = bisect.bisect_right(annotated, t)
    before, after = (annotated[i - 1] if i else None), next((a for a in annotated if a >= t), None)
    if before is not None and (not backward or after is None or t - before <= after - t):
        return "forward"
    return "backward" if backward else "forward"  # forward yields unreached frames as background


def check(stream, reference) -> dict:
    got = {t: (mask, soft) for t, mask, soft in stream}
    for t, (mask, soft) in got.items():
        np.testing.assert_array_equal(mask, reference[t][0], err_msg=f"frame {t}")
        np.testing.assert_allclose(soft, reference[t][1], rtol=0, atol=1e-6, err_msg=f"frame {t}")
    return got


# ------------------------------------------------------------------------------------- the loop

def test_a_correction_re_propagates_from_its_frame_without_running_the_backbone(clip, tiny, monkeypatch):
    frames, gt = clip
    encoded = []
    real = FrameEncoder.__call__
    monkeypatch.setattr(FrameEncoder, "__call__", lambda self, chunk: encoded.append(len(chunk)) or real(self, chunk))
    with session(frames, tiny) as s:
        s.add_mask(0, gt[0])
        first = check(s.propagate(soft=True), fresh(frames, {0: gt[0]}, tiny))
        assert sorted(first) == list(range(T)) and sum(encoded) == T + T  # the session's run and the reference's
        encoded.clear()
        corrected = np.where(gt[7] == 2, 2, 0)
        s.add_mask(7, corrected)
        stream = s.propagate(soft=True)
        assert stream.ids.tolist() == [0, 1, 2] and stream.names == [f"{t:05d}" for t in range(T)]
        again = {t: (m, soft) for t, m, soft in stream}
        assert encoded == [] and sorted(again) == list(range(7, T))  # features kept; frames 7.. only
        reference = fresh(frames, {0: gt[0], 7: corrected}, tiny)
        check(((t, m, soft) for t, (m, soft) in again.items()), reference)
        assert list(s.propagate()) == []  # nothing changed since
        assert [t for t, _ in s.propagate(start=0)] == list(range(T))


def test_a_correction_restarts_the_engine_from_the_last_state_kept_before_it(clip, tiny, monkeypatch):
    frames, gt = clip
    stepped = []
    real = Propagator.step
    monkeypatch.setattr(Propagator, "step", lambda self, feats: stepped.append(len(feats)) or real(self, feats))
    with session(frames, tiny, snapshot_every=4) as s:
        s.add_mask(0, gt[0])
        list(s.propagate())
        stepped.clear()
        s.add_mask(10, gt[10])
        assert [t for t, _ in s.propagate()] == list(range(10, T))
        assert sum(stepped) == T - 8  # from the state kept at frame 8, not from frame 0


def test_a_random_sequence_of_corrections_equals_one_fresh_run_per_direction(clip, tiny):
    frames, gt = clip
    rng = np.random.default_rng(0)
    box = np.zeros(SMALL, np.uint8)
    box[40:90, 60:120] = 3  # an object that only some masks show
    view: dict[int, np.ndarray] = {}  # what the user holds: the last mask yielded for each frame
    with session(frames, tiny, snapshot_every=3, batch_size=4) as s:
        s.add_mask(int(rng.integers(0, T)), gt[0])
        for op in ("add", "new object", "add", "remove object", "add"):
            t = int(rng.integers(0, T))
            if op == "add":  # a mask of every object, or of object 1 alone
                s.add_mask(t, np.where(rng.random() < 0.5, gt[t], gt[t] * (gt[t] == 1)).astype(np.uint8))
            elif op == "new object":
                s.add_mask(t, np.where(box > 0, box, gt[t]))
            else:
                s.remove_object(3)
            masks = s.annotations
            forward, backward = fresh(frames, masks, tiny), fresh(frames, masks, tiny, reverse=True)
            for reverse, reference in ((False, forward), (True, backward)):
                got = check(s.propagate(reverse=reverse, soft=True), reference)
                view.update({t: mask for t, (mask, _) in got.items()})
            for t in range(T):  # after both streams the user's view is the rule's combination
                decided = forward if nearer_decides(t, sorted(masks), backward=True) == "forward" else backward
                np.testing.assert_array_equal(view[t], decided[t][0], err_msg=f"frame {t} after {op}")


# --------------------------------------------------------------------------------------- reverse

def test_reverse_runs_the_protocol_backwards_and_the_nearer_mask_decides_a_frame_both_reach(clip, tiny):
    frames, gt = clip
    late = np.where(gt[9] == 2, 2, gt[9])
    with session(frames, tiny) as s:
        s.add_mask(9, late)
        forward = [t for t, _ in s.propagate()]
        assert forward == list(range(T))  # frames 0..8: background, as propagate_masks gives them
        backward = check(s.propagate(reverse=True, soft=True), fresh(frames, {9: late}, tiny, reverse=True))
        assert list(backward) == list(range(8, -1, -1))  # towards frame 0, annotated frame excluded (ties forward)
        assert (backward[0][0] == 2).any()  # the object is followed back to frame 0
        s.add_mask(3, gt[3])
        reverse = [t for t, _ in s.propagate(reverse=True)]
        forward = [t for t, _ in s.propagate()]
        assert reverse == [2, 1, 0]  # 7, 8 stay nearer frame 9 and did not change; 4, 5, 6 turn forward
        assert forward == [3, 4, 5, 6] + list(range(9, T))  # 6 is a tie: forward
        assert [nearer_decides(t, [3, 9], True) for t in (5, 6, 7)] == ["forward", "forward", "backward"]


# ---------------------------------------------------------------------------------- bounded memory

def test_features_beyond_the_budget_spill_to_a_file_that_reads_back_exactly_and_goes_on_close(clip, tiny, tmp_path):
    frames, gt = clip
    frame_bytes = 8 * 12 * 32 * 4
    budget = 5 * frame_bytes
    s = session(frames, tiny, cache_bytes=budget, snapshot_every=2, spill_dir=tmp_path)
    s.add_mask(0, gt[0])
    list(s.propagate())
    spill = list(tmp_path.iterdir())
    assert len(spill) == 1 and spill[0].stat().st_size == s.spilled_nbytes > 0
    assert s.nbytes <= budget and s.nbytes + s.spilled_nbytes >= T * frame_bytes  # snapshots counted too
    s.add_mask(5, gt[5])
    check(((t, m, soft) for t, m, soft in s.propagate(soft=True)), fresh(frames, {0: gt[0], 5: gt[5]}, tiny))
    s.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="closed"):
        s.propagate()


def test_memory_held_is_flat_in_video_length_beyond_the_budget(tiny):
    frames, gt = make_demo_clip(n_frames=24, size=SMALL, seed=4)
    budget = 10 * 8 * 12 * 32 * 4  # 10 frames of features; engine snapshots may take an eighth
    with session(frames, tiny, cache_bytes=budget, snapshot_every=1) as s:
        s.add_mask(0, gt[0])
        held = [s.nbytes for _ in s.propagate()]
        assert max(held) <= budget and s.spilled_nbytes >= 15 * 8 * 12 * 32 * 4  # 8 frames kept at most
        s.add_mask(20, gt[20])
        check(s.propagate(soft=True), fresh(frames, {0: gt[0], 20: gt[20]}, tiny))
        assert s.nbytes <= budget
        held = {x.untyped_storage().data_ptr(): x.untyped_storage().nbytes()
                for kept in s._states.kept for state in kept.values() for x in state.tensors}
        assert 0 < s._states.nbytes == sum(held.values()) <= budget // 8  # engine states: an eighth, shared once


def test_an_engine_restored_from_a_snapshot_continues_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(6, 9, 12, generator=gen)]
    for _ in range(23):
        feats.append(feats[-1] + 0.15 * torch.randn(6, 9, 12, generator=gen))
    feats = F.normalize(torch.stack(feats), dim=-1)
    first = F.one_hot(torch.randint(0, 2, (6, 9), generator=gen), 3).permute(2, 0, 1).float()
    late = F.one_hot(torch.randint(0, 3, (6, 9), generator=gen), 3).permute(2, 0, 1).float()
    annotations = {6: (late, [2]), 13: (late, [1])}

    def run(prop: Propagator, t0: int) -> tuple[list, dict]:
        out, kept = [], {}
        for t in range(t0, 24):
            out.append(prop.step(feats[t:t + 1])[0])
            if t in annotations:
                out[-1] = prop.annotate(*annotations[t])
            kept[t + 1] = prop.snapshot()
        return out, kept

    prop = Propagator(topk=5, radius=3, n_context=4)
    prop.reset(feats[0], first)
    after_reset = prop.snapshot()
    reference, kept = run(prop, 1)
    kept[1] = after_reset
    for t in (1, 3, 6, 7, 8, 13, 14, 20):  # after reset, mid-context, at and after annotations
        restored = Propagator(topk=5, radius=3, n_context=4)
        restored.restore(kept[t], lambda f: feats[f])
        assert torch.equal(torch.stack(run(restored, t)[0]), torch.stack(reference[t - 1:])), t
    with pytest.raises(ValueError, match="snapshot: taken with"):
        Propagator(topk=4).restore(kept[3], lambda f: feats[f])


# ----------------------------------------------------------------------------------- the other calls

def test_remove_object_and_reset_act_as_if_the_masks_were_never_given(clip, tiny, monkeypatch):
    frames, gt = clip
    with session(frames, tiny) as s:
        s.add_mask(0, gt[0])
        s.add_mask(6, np.where(gt[6] == 2, 2, 0))
        list(s.propagate())
        s.remove_object(2)  # frame 6 showed object 2 alone: its mask goes
        assert list(s.annotations) == [0] and s.propagate().ids.tolist() == [0, 1]
        check(s.propagate(soft=True), fresh(frames, {0: np.where(gt[0] == 2, 0, gt[0])}, tiny))
        s.reset()
        assert s.annotations == {}
        with pytest.raises(ValueError, match=r"no mask given yet; call session.add_mask"):
            s.propagate()
        reference = fresh(frames, {2: gt[2]}, tiny)
        monkeypatch.setattr(FrameEncoder, "__call__", lambda *a: pytest.fail("the features were kept"))
        s.add_mask(2, gt[2])
        check(s.propagate(soft=True), reference)


def test_errors_name_the_argument_and_a_changed_session_ends_its_streams(clip, tiny):
    frames, gt = clip
    with session(frames, tiny) as s:
        with pytest.raises(ValueError, match=rf"masks\[{T}\]: frame index out of range"):
            s.add_mask(T, gt[0])
        s.add_mask(0, gt[0])
        with pytest.raises(ValueError, match=r"obj_id=7: no mask given shows this object; the ids given are \[1, 2\]"):
            s.remove_object(7)
        with pytest.raises(ValueError, match=rf"start=-1: expected a frame index in 0..{T - 1}"):
            s.propagate(start=-1)
        stream = s.propagate()
        next(stream)
        s.add_mask(4, gt[4])
        with pytest.raises(ValueError, match=r"masks changed after this stream started; call session.propagate"):
            list(stream)
    with pytest.raises(ValueError, match="cache_bytes=-1: expected a number of bytes >= 0"):
        session(frames, tiny, cache_bytes=-1)
