"""tcore.metrics: DAVIS J&F equal to the official evaluation, JHMDB PCK, VIP mIoU."""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
from benchmarks.oracles import official_bmap, official_davis_per_frame, official_disk
from helpers import REPO, shared_path
from PIL import Image

from tcore import metrics
from tcore.metrics import (
    MIoUAccumulator,
    PCKAccumulator,
    davis_scores,
    davis_summary,
    pck,
)
from tcore.metrics import davis as metrics_davis

try:
    import cv2
except ImportError:
    cv2 = None
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="the independent reference dilates with OpenCV "
                               "(opencv-python-headless, in the [test] extra)")


# the independent implementation of the official DAVIS algorithm (per frame, cv2) is benchmarks/oracles.py's


def _official_statistics(values: np.ndarray) -> tuple[float, float, float]:
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [values[ids[i]:ids[i + 1] + 1] for i in range(4)]
    return np.nanmean(values), np.nanmean(values > 0.5), np.nanmean(bins[0]) - np.nanmean(bins[3])


def _random_blobs(rng: np.random.Generator, frames: int, height: int, width: int,
                  n_obj: int) -> np.ndarray:
    """(T, H, W) uint8 ids: discs and rectangles, some touching the image border."""
    ids = np.zeros((frames, height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for t in range(frames):
        for k in range(1, n_obj + 1):
            cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
            r = rng.uniform(0.05, 0.4) * min(height, width)
            if rng.random() < 0.5:
                ids[t][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
            else:
                ids[t][(abs(yy - cy) <= r) & (abs(xx - cx) <= 0.7 * r)] = k
    return ids


def _perturb(rng: np.random.Generator, ids: np.ndarray, n_obj: int) -> np.ndarray:
    """A prediction: shifted ground truth with noise, an object sometimes missing."""
    pred = np.roll(ids, tuple(rng.integers(-3, 4, 2)), axis=(1, 2)).copy()
    noise = rng.random(ids.shape) < 0.002
    pred[noise] = rng.integers(0, n_obj + 1, noise.sum())
    if rng.random() < 0.3:
        pred[pred == rng.integers(1, n_obj + 1)] = 0
    return pred


def _one_scored_frame(gt_frame: np.ndarray, pred_frame: np.ndarray, n_obj: int = 1) -> dict:
    """davis_scores of a 3-frame sequence whose only scored frame is the given one."""
    first = np.zeros_like(gt_frame)
    first.flat[:n_obj] = np.arange(1, n_obj + 1)
    return davis_scores(np.stack([first, gt_frame, first]), np.stack([first, pred_frame, first]))


# --------------------------------------------------------------------------------------------------
# DAVIS: real data


def _read_ids(folder) -> np.ndarray:
    return np.stack([np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_osvos_predictions_reproduce_the_official_scores():
    root = shared_path("data", "davis-osvos-predictions")
    expected = json.loads((root / "expected.json").read_text())
    per_sequence = {}
    for name in ("car-shadow", "dog"):
        gt = _read_ids(shared_path("data", "davis", "Annotations", "480p", name))
        pred = _read_ids(root / name)
        assert len(gt) == len(pred) == expected[name]["frames"]
        scores = davis_scores(gt, pred)
        per_sequence[name] = scores
        assert scores["n_objects"] == 1
        for key in ("J", "F", "JF"):
            assert scores[key][0] == pytest.approx(expected[name][key], abs=1e-6), (name, key)
    summary = davis_summary(per_sequence)
    for key, column in (("J", "J-Mean"), ("F", "F-Mean"), ("JF", "J&F-Mean")):
        assert summary[column] == pytest.approx(expected["mean_over_objects"][key], abs=1e-6)


# --------------------------------------------------------------------------------------------------
# DAVIS: equal to the independent implementation


@needs_cv2
@pytest.mark.parametrize("height,width,n_obj,seed", [(48, 64, 3, 0), (31, 17, 2, 1), (120, 200, 4, 2),
                                                     (9, 40, 1, 3), (60, 90, 5, 4)])
def test_davis_scores_equal_the_official_algorithm_on_random_blobs(height, width, n_obj, seed):
    rng = np.random.default_rng(seed)
    gt = _random_blobs(rng, 7, height, width, n_obj)
    gt[0].flat[0] = n_obj  # every object id exists in frame 0
    gt[3, : height // 4, : width // 4] = 255  # void
    gt[4, -3:, -3:] = n_obj + 1  # an id that appears later is background
    pred = _perturb(rng, gt.clip(0, n_obj), n_obj)
    j, f = official_davis_per_frame(gt, pred)
    scores = davis_scores(gt, pred)
    np.testing.assert_array_equal(scores["J_per_frame"], j)
    np.testing.assert_array_equal(scores["F_per_frame"], f)
    for k in range(n_obj):
        assert (scores["J"][k], scores["J_recall"][k], scores["J_decay"][k]) == _official_statistics(j[k])
        assert (scores["F"][k], scores["F_recall"][k], scores["F_decay"][k]) == _official_statistics(f[k])
        assert scores["JF"][k] == (scores["J"][k] + scores["F"][k]) / 2


def test_torch_path_gives_the_numpy_counts():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    gt = _random_blobs(rng, 6, 40, 56, 3)
    gt[0].flat[0] = 3
    pred = _perturb(rng, gt, 3)
    expected = davis_scores(gt, pred)
    got = davis_scores(torch.from_numpy(gt).long(), torch.from_numpy(pred), device="cpu")
    np.testing.assert_array_equal(got["J_per_frame"], expected["J_per_frame"])
    np.testing.assert_array_equal(got["F_per_frame"], expected["F_per_frame"])


def test_torch_tensors_are_accepted_as_input():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    gt = _random_blobs(rng, 5, 30, 40, 2)
    gt[0].flat[0] = 2
    pred = _perturb(rng, gt, 2)
    assert davis_scores(torch.from_numpy(gt), torch.from_numpy(pred))["F"] == davis_scores(gt, pred)["F"]


# --------------------------------------------------------------------------------------------------
# DAVIS: hand-made boundary cases


def _points(b: np.ndarray) -> set[tuple[int, int]]:
    return {(int(y), int(x)) for y, x in zip(*np.nonzero(b))}


def test_boundary_of_a_single_pixel_is_the_pixel_and_its_west_north_neighbours():
    mask = np.zeros((4, 5), bool)
    mask[1, 1] = True
    assert _points(metrics_davis._boundary(mask)) == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_boundary_in_the_last_row_compares_with_the_east_neighbour_only():
    mask = np.zeros((3, 4), bool)
    mask[2, 1:3] = True
    assert _points(metrics_davis._boundary(mask)) == {(1, 0), (1, 1), (1, 2), (2, 0), (2, 2)}


def test_boundary_in_the_last_column_compares_with_the_south_neighbour_only():
    mask = np.zeros((3, 3), bool)
    mask[:, 2] = True
    assert _points(metrics_davis._boundary(mask)) == {(0, 1), (1, 1), (2, 1)}


def test_boundary_bottom_right_pixel_is_never_boundary():
    mask = np.zeros((4, 4), bool)
    mask[3, 3] = True
    assert _points(metrics_davis._boundary(mask)) == {(2, 2), (2, 3), (3, 2)}


def test_boundary_matches_the_official_rules_on_random_masks():
    rng = np.random.default_rng(7)
    for shape in [(1, 1), (1, 7), (7, 1), (5, 6), (13, 11)]:
        mask = rng.random(shape) < 0.5
        np.testing.assert_array_equal(metrics_davis._boundary(mask), official_bmap(mask))


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 8, 9])
def test_dilation_is_the_disk_of_all_offsets_within_the_radius(radius):
    rng = np.random.default_rng(radius)
    for shape in [(1, 9), (9, 1), (12, 25), (30, 17)]:
        b = rng.random(shape) < 0.05
        expected = np.zeros(shape, bool)
        for y, x in zip(*np.nonzero(b)):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    inside = 0 <= y + dy < shape[0] and 0 <= x + dx < shape[1]
                    if dy * dy + dx * dx <= radius * radius and inside:
                        expected[y + dy, x + dx] = True
        np.testing.assert_array_equal(metrics_davis._dilate(b, radius), expected)


def test_boundary_radius_is_8_at_480x854_and_9_at_480x880():
    assert metrics.davis_boundary_radius(480, 854) == 8
    assert metrics.davis_boundary_radius(480, 880) == 9
    assert int(official_disk(8).sum()) == 197


@pytest.mark.parametrize("width,radius", [(854, 8), (880, 9)])
def test_f_measure_matches_boundaries_up_to_the_radius_and_not_beyond(width, radius):
    gt = np.zeros((480, width), np.uint8)
    gt[:, 300:400] = 1  # full-height strip: boundaries are the columns 299 and 399
    for shift, expected_f in ((radius, 1.0), (radius + 1, 0.0)):
        pred = np.roll(gt, shift, axis=1)
        assert _one_scored_frame(gt, pred)["F"] == [expected_f]


def test_f_measure_ignores_pixels_outside_the_image():
    # Boundaries at columns 0 and 198 of a 200-wide image: 2 apart across the border (a wrapping
    # dilation would match them), and both within the radius 2 of the outside (a dilation that
    # counts the outside as foreground would match them).
    gt, pred = np.zeros((20, 200), np.uint8), np.zeros((20, 200), np.uint8)
    gt[:, 0] = 1
    pred[:, 199] = 1
    assert metrics.davis_boundary_radius(20, 200) == 2
    scores = _one_scored_frame(gt, pred)
    assert scores["F"] == [0.0] and scores["J"] == [0.0]


@needs_cv2
def test_object_in_the_last_row_and_column_is_scored_as_the_official_code():
    gt, pred = np.zeros((30, 40), np.uint8), np.zeros((30, 40), np.uint8)
    gt[-1, 10:30] = 1
    gt[5:25, -1] = 1
    pred[-2:, 12:30] = 1
    pred[8:25, -2:] = 1
    j, f = official_davis_per_frame(np.stack([gt, gt, gt]), np.stack([pred, pred, pred]))
    scores = _one_scored_frame(gt, pred)
    assert scores["J"] == [j[0, 0]] and scores["F"] == [f[0, 0]]
    assert 0 < scores["F"][0] < 1


def test_both_masks_empty_give_j_and_f_of_one():
    empty = np.zeros((20, 30), np.uint8)
    scores = _one_scored_frame(empty, empty)
    assert scores["J"] == [1.0] and scores["F"] == [1.0]


def test_empty_prediction_gives_j_and_f_of_zero():
    gt = np.zeros((20, 30), np.uint8)
    gt[5:10, 5:10] = 1
    scores = _one_scored_frame(gt, np.zeros_like(gt))
    assert scores["J"] == [0.0] and scores["F"] == [0.0]


def test_prediction_without_ground_truth_gives_j_and_f_of_zero():
    pred = np.zeros((20, 30), np.uint8)
    pred[5:10, 5:10] = 1
    scores = _one_scored_frame(np.zeros_like(pred), pred)
    assert scores["J"] == [0.0] and scores["F"] == [0.0]


def test_object_filling_the_image_has_no_boundary_so_f_is_one():
    full = np.ones((20, 30), np.uint8)
    scores = _one_scored_frame(full, full)
    assert scores["J"] == [1.0] and scores["F"] == [1.0]


def test_single_pixel_one_step_off_has_f_of_one_and_j_of_zero():
    gt, pred = np.zeros((20, 30), np.uint8), np.zeros((20, 30), np.uint8)
    gt[10, 10] = 1
    pred[10, 11] = 1
    scores = _one_scored_frame(gt, pred)
    assert scores["J"] == [0.0] and scores["F"] == [1.0]


# --------------------------------------------------------------------------------------------------
# DAVIS: protocol (objects, frames, statistics, summary)


def test_only_frames_1_to_t_minus_2_are_scored():
    gt = np.zeros((5, 10, 10), np.uint8)
    gt[:, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[0], pred[4] = 0, 0  # first and last frames are not scored
    scores = davis_scores(gt, pred)
    assert scores["J_per_frame"].shape == (1, 3)
    assert scores["J"] == [1.0] and scores["F"] == [1.0]


def test_objects_are_counted_from_the_first_ground_truth_frame_and_void_is_background():
    gt = np.zeros((4, 10, 10), np.uint8)
    gt[0, 1, 1], gt[0, 5, 5], gt[0, 0, 9] = 1, 2, 255
    gt[1:3, 6:9, 6:9] = 3  # object 3 is not in frame 0: background
    gt[1:3, 0:2, 0:2] = 255  # void: background
    pred = np.zeros_like(gt)
    pred[1:3, 6:9, 6:9] = 2
    scores = davis_scores(gt, pred)
    assert scores["n_objects"] == 2
    assert scores["J"] == [1.0, 0.0]  # object 1 absent everywhere; object 2 predicted where there is none


def test_prediction_with_more_objects_than_the_ground_truth_names_both_counts():
    gt = np.zeros((3, 10, 10), np.uint8)
    gt[0, 1, 1] = 1
    pred = np.zeros_like(gt)
    pred[1, 5, 5] = 3
    with pytest.raises(ValueError, match=r"object id 3.*1 objects"):
        davis_scores(gt, pred)


def test_objects_missing_from_the_prediction_score_zero():
    gt = np.zeros((3, 10, 10), np.uint8)
    gt[:, 1:4, 1:4], gt[:, 6:9, 6:9] = 1, 2
    pred = np.where(gt == 2, 0, gt)
    scores = davis_scores(gt, pred)
    assert scores["J"] == [1.0, 0.0] and scores["F"] == [1.0, 0.0]


def test_decay_bins_round_halves_up_as_the_official_code():
    # three scored frames with J = 1, 0.5, 0: the bin edges round(linspace(1, 3, 5)) are 1, 2, 2, 3, 3
    # (halves up), so the last quarter is frame 3 alone and the decay is (1 + 0.5) / 2 - 0 = 0.75.
    gt = np.zeros((5, 4, 8), np.uint8)
    gt[:, 1, 1:3] = 1
    pred = gt.copy()
    pred[2, 1, 2] = 0
    pred[3] = 0
    pred[3, 3, 6] = 1
    scores = davis_scores(gt, pred)
    np.testing.assert_array_equal(scores["J_per_frame"], [[1.0, 0.5, 0.0]])
    assert scores["J_decay"] == [0.75]
    assert scores["J_recall"] == [1 / 3]


def test_summary_is_object_weighted_and_lists_rows_per_object():
    one = {"J": [1.0], "F": [1.0], "J_recall": [1.0], "F_recall": [1.0], "J_decay": [0.0], "F_decay": [0.0]}
    two = {"J": [0.4, 0.1], "F": [0.6, 0.3], "J_recall": [0.0, 0.0], "F_recall": [1.0, 0.0],
           "J_decay": [0.1, 0.2], "F_decay": [0.3, -0.3]}
    summary = davis_summary({"a": one, "b": two})
    assert summary["J-Mean"] == pytest.approx(1.5 / 3)  # not (1 + 0.25) / 2
    assert summary["F-Mean"] == pytest.approx(1.9 / 3)
    assert summary["J&F-Mean"] == pytest.approx((1.5 / 3 + 1.9 / 3) / 2)
    assert summary["F-Recall"] == pytest.approx(2 / 3)
    assert [row["Sequence"] for row in summary["per_object"]] == ["a_1", "b_1", "b_2"]
    global_csv, per_sequence_csv = metrics.format_davis_csv(summary)
    assert global_csv == ("J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
                          "0.567,0.500,0.333,0.100,0.633,0.667,0.000\n")
    assert per_sequence_csv == "Sequence,J-Mean,F-Mean\na_1,1.000,1.000\nb_1,0.400,0.600\nb_2,0.100,0.300\n"
    assert davis_summary([one, two])["per_object"][2]["Sequence"] == "1_2"


def test_summary_without_objects_is_an_error():
    with pytest.raises(ValueError, match="no object"):
        davis_summary({})


@pytest.mark.parametrize("gt,pred,message", [
    (np.zeros((3, 4, 4)), np.zeros((3, 4, 4), np.uint8), "gt must hold integer ids"),
    (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), r"gt must have shape \(T, H, W\)"),
    (np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 5), np.uint8), r"\(3, 4, 4\) and pred \(3, 4, 5\)"),
    (np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.uint8), "at least 3 non-empty frames"),
    (np.zeros((3, 4, 4), np.int8), -np.ones((3, 4, 4), np.int8), "pred must hold non-negative ids"),
])
def test_bad_davis_input_names_the_argument(gt, pred, message):
    with pytest.raises(ValueError, match=message):
        davis_scores(gt, pred)


# --------------------------------------------------------------------------------------------------
# JHMDB PCK


def _reference_pck(videos, alphas):
    """Loops as the reference eval_pck.py: per-frame box over predicted-visible joints, frame 0 off."""
    dist = {}
    for gt, pred in videos:  # (T, K, 2)
        for k in range(gt.shape[0]):
            visible = [j for j in range(gt.shape[1]) if not pred[k, j, 0] < 0]
            lo_x = lo_y = 1e6
            hi_x = hi_y = -1
            for j in visible:
                lo_x, lo_y = min(lo_x, gt[k, j, 0]), min(lo_y, gt[k, j, 1])
                hi_x, hi_y = max(hi_x, gt[k, j, 0]), max(hi_y, gt[k, j, 1])
            scale = 0.6 * math.hypot(hi_x - lo_x, hi_y - lo_y)
            for j in visible:
                if k > 0:
                    d = math.hypot(*(pred[k, j] - gt[k, j]))
                    dist.setdefault(j, []).append(d / scale if scale else math.inf)
    return {a: np.mean([100.0 * np.sum(np.array(v) <= a) / len(v) for _, v in sorted(dist.items())])
            for a in alphas}


def _skeleton(frames: int = 4) -> np.ndarray:
    """(T, 3, 2): three joints spanning a 30 x 40 box (diagonal 50, scale 30)."""
    return np.tile(np.array([[10.0, 20.0], [40.0, 60.0], [25.0, 40.0]]), (frames, 1, 1))


def test_pck_scale_is_0_6_of_the_ground_truth_box_diagonal():
    gt = _skeleton()
    pred = gt.copy()
    pred[:, 2, 0] += 2.9  # 0.097 of the scale 30
    pred[:, 1, 1] += 3.1  # 0.103
    result = pck(gt, pred, alphas=(0.1, 0.2))
    np.testing.assert_allclose(result["PCK_per_joint"][0.1], [100.0, 0.0, 100.0])
    assert result["PCK"][0.1] == pytest.approx(200 / 3)
    assert result["PCK"][0.2] == 100.0


def test_pck_skips_frame_0():
    gt = _skeleton()
    pred = gt.copy()
    pred[0] += 100.0
    result = pck(gt, pred)
    assert all(v == 100.0 for v in result["PCK"].values())
    np.testing.assert_array_equal(result["n_per_joint"], [3, 3, 3])


def test_pck_drops_joints_whose_prediction_vanished_by_default():
    gt = _skeleton()
    gt[:, 1] = [400.0, 300.0]  # far away: it would enlarge the box if it were visible
    pred = gt.copy()
    pred[:, 1] = -1.0
    pred[:, 2, 0] += 2.9  # 0.097 of the box of joints 0 and 2 (diagonal 25, scale 15) -> 0.19
    result = pck(gt, pred, alphas=(0.1, 0.2))
    np.testing.assert_array_equal(result["n_per_joint"], [3, 0, 3])
    assert np.isnan(result["PCK_per_joint"][0.1][1])
    assert result["PCK"][0.1] == 50.0  # joints 0 (100) and 2 (0); joint 1 has no entry
    assert result["PCK"][0.2] == 100.0


def test_pck_with_ground_truth_visibility_counts_vanished_joints_as_misses():
    gt = _skeleton()
    pred = gt.copy()
    pred[1:, 1] = -1.0
    visible = np.ones((4, 3), bool)
    visible[:, 2] = False
    result = pck(gt, pred, visibility="ground_truth", gt_visible=visible)
    np.testing.assert_array_equal(result["n_per_joint"], [3, 3, 0])
    np.testing.assert_array_equal(result["PCK_per_joint"][0.5][:2], [100.0, 0.0])
    assert pck(gt, pred, visibility="ground_truth")["n_per_joint"].tolist() == [3, 3, 3]


def test_pck_pools_entries_over_videos_then_averages_joints():
    acc = PCKAccumulator(alphas=(0.1,))
    short, long = _skeleton(2), _skeleton(4)
    acc.update(short, short)  # 1 scored frame, all 3 joints right
    pred = long + np.array([0.0, 20.0])  # 20 px off: 0.67 of the scale 30
    pred[:, 0] = long[:, 0]  # joint 0 right
    pred[1:3, 2] = -1.0  # joint 2 vanished in 2 of the 3 scored frames
    acc.update(long, pred)
    result = acc.result()
    # joint 0: 4 of 4, joint 1: 1 of 4, joint 2: 1 of 2 -> mean over joints (100 + 25 + 50) / 3;
    # pooling all joints would give 6 / 10, averaging the videos (100 + 33.3) / 2
    np.testing.assert_allclose(result["PCK_per_joint"][0.1], [100.0, 25.0, 50.0])
    assert result["PCK"][0.1] == pytest.approx(175 / 3)
    np.testing.assert_array_equal(result["n_per_joint"], [4, 4, 2])


def test_pck_box_upper_corner_starts_at_minus_one_as_the_reference():
    gt = np.tile(np.array([[-10.0, 5.0], [-20.0, 15.0]]), (2, 1, 1))  # every x below -1
    pred = np.tile(np.array([[0.0, 5.0], [2.0, 15.0]]), (2, 1, 1))  # 10 and 22 px off
    # the reference's box spans x from -20 to -1 (not -10) and y from 5 to 15
    scale = 0.6 * np.sqrt(19.0 ** 2 + 10.0 ** 2)
    result = pck(gt, pred, alphas=(10.0 / scale, 9.99 / scale))
    assert list(result["PCK"].values()) == [50.0, 0.0]


def test_pck_equals_the_reference_loops_on_random_videos():
    rng = np.random.default_rng(8)
    videos = []
    for _ in range(5):
        gt = rng.uniform(0, 300, (12, 15, 2))
        pred = gt + rng.normal(0, 12, gt.shape)
        pred[rng.random((12, 15)) < 0.1] = -1.0
        videos.append((gt, pred.astype(np.float32)))
    acc = PCKAccumulator()
    for gt, pred in videos:
        acc.update(gt, pred)
    expected = _reference_pck([(g, p.astype(np.float64)) for g, p in videos], metrics.PCK_ALPHAS)
    for alpha in metrics.PCK_ALPHAS:
        assert acc.result()["PCK"][alpha] == pytest.approx(expected[alpha], abs=1e-9)


def test_pck_rejects_the_jhmdb_file_layout_with_a_hint():
    with pytest.raises(ValueError, match=r"transpose"):
        pck(np.zeros((2, 15, 10)), np.zeros((2, 15, 10)))


def test_pck_gt_visible_needs_ground_truth_visibility():
    with pytest.raises(ValueError, match="visibility='ground_truth'"):
        pck(_skeleton(), _skeleton(), gt_visible=np.ones((4, 3), bool))


def test_pck_without_entries_is_an_error():
    with pytest.raises(ValueError, match="no visible joint"):
        PCKAccumulator().result()


# --------------------------------------------------------------------------------------------------
# VIP mIoU


def test_miou_from_the_confusion_matrix():
    acc = MIoUAccumulator(n_classes=3)
    acc.update(np.array([[0, 0, 1, 1]]), np.array([[0, 1, 1, 1]]))
    result = acc.result()
    np.testing.assert_allclose(result["IoU"][:2], [1 / 2, 2 / 3])
    assert np.isnan(result["IoU"][2])  # absent from gt and pred: skipped
    assert result["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result["pixel_accuracy"] == 0.75


def test_miou_ignores_ground_truth_values_outside_the_classes():
    acc = MIoUAccumulator(n_classes=2)
    acc.update(np.array([[0, 1, 255, -1, 2]], np.int32), np.array([[0, 1, 1, 1, 1]]))
    assert acc.result()["mIoU"] == 1.0
    assert acc.confusion.sum() == 2


def test_miou_counts_every_frame_passed_including_frame_0():
    gt = np.zeros((3, 4, 4), np.uint8)
    gt[0, :2] = 1  # class 1 only in frame 0
    acc = MIoUAccumulator(n_classes=2)
    acc.update(gt, gt)
    assert acc.result()["IoU"].tolist() == [1.0, 1.0]


def test_miou_uses_one_global_matrix_over_videos():
    acc = MIoUAccumulator(n_classes=2)
    acc.update(np.array([[1, 1, 1, 0]]), np.array([[1, 1, 1, 0]]))  # perfect
    acc.update(np.array([[1, 0]]), np.array([[0, 0]]))  # class 1 missed
    # class 1: TP 3, FN 1 -> 0.75; class 0: TP 2, FP 1 -> 2/3 (per-video means would differ)
    np.testing.assert_allclose(acc.result()["IoU"], [2 / 3, 0.75])


def test_miou_rejects_predicted_ids_outside_the_classes():
    with pytest.raises(ValueError, match="class id 20 but there are 20 classes"):
        MIoUAccumulator().update(np.zeros((2, 2), np.uint8), np.full((2, 2), 20, np.uint8))


def test_miou_without_pixels_is_an_error():
    with pytest.raises(ValueError, match="no ground-truth pixel"):
        MIoUAccumulator().result()


# --------------------------------------------------------------------------------------------------
# benchmark harness


def test_benchmark_small_run_agrees_with_the_direct_implementation(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # as `python benchmarks/metrics.py` runs it
    spec = importlib.util.spec_from_file_location("_metrics_benchmark", REPO / "benchmarks" / "metrics.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    timings, scored = bench.run(frames=8, height=48, width=80, objects=2, seq_len=4)
    assert scored == 4
    assert [t.agree for t in timings] == [True, True]
    assert "| tcore davis_scores (numpy, CPU) |" in bench.format_table(timings, scored)
