"""Feature pictures (`tcore.pictures`, `tcore features`): PCA colours stable over time, correspondence
maps that are the engine's cosine affinities."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tcore
from tcore.cli import main
from tcore.demo import make_demo_clip
from tcore.pictures import FeaturePictures, affinity_map, draw_heat_scale, fit_pca, heat_colours, pca_colours
from tcore.propagation.encoder import FrameEncoder
from tcore.propagation.presets import get_preset, working_size


@pytest.fixture(scope="module")
def clip():
    """A 6-frame demo clip (96x128) whose frame 4 repeats frame 0."""
    frames, _ = make_demo_clip(n_frames=6, size=(96, 128), seed=3)
    frames[4] = frames[0]
    return frames


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2).eval()


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_pca_colour_is_a_function_of_the_feature_alone():
    a = _unit(6, 8, 32)
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(1))
    b = a.reshape(48, 32)[perm].reshape(6, 8, 32)  # frame b: frame a's features, moved around
    b[0, :3] = _unit(3, 32, seed=2)  # ... and three new ones
    basis = fit_pca(torch.stack([a, b]))
    colours_a, colours_b = pca_colours(a, basis), pca_colours(b, basis)
    moved = colours_a.reshape(48, 3)[perm].reshape(6, 8, 3)
    np.testing.assert_array_equal(colours_b[1:], moved[1:])
    np.testing.assert_array_equal(colours_b[0, 3:], moved[0, 3:])
    assert colours_a.dtype == np.uint8 and colours_a.shape == (6, 8, 3)


def test_fit_pca_gives_orthonormal_components_by_decreasing_variance_with_a_fixed_sign():
    scales = torch.tensor([5.0, 3.0, 2.0] + [0.1] * 13, dtype=torch.float64)
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scales
    basis = fit_pca(x)
    comps = basis.components
    torch.testing.assert_close(comps @ comps.T, torch.eye(3, dtype=torch.float64))
    variances = ((x - basis.mean) @ comps.T).var(0)
    assert variances[0] > variances[1] > variances[2] > 1.0
    assert comps.abs().argmax(1).tolist() == [0, 1, 2]  # the axes of the largest spreads
    assert bool((comps[torch.arange(3), comps.abs().argmax(1)] > 0).all())
    torch.testing.assert_close(fit_pca(-x).components, comps)  # the sign does not follow the data's


def test_fit_pca_refuses_too_few_channels():
    with pytest.raises(ValueError, match="at least 3 channels"):
        fit_pca(torch.zeros(10, 2))


def test_pca_pictures_give_the_same_colours_to_the_same_frame_content_at_two_times(clip, tiny):
    pictures = FeaturePictures(clip, model=tiny, size=(96, 128), device="cpu", n_fit_frames=3)
    late_first = pictures.pca_picture(4)  # the basis is fitted on first use, whatever the frame
    np.testing.assert_array_equal(pictures.pca_picture(0), late_first)
    assert late_first.shape == (96, 128, 3) and len(np.unique(late_first.reshape(-1, 3), axis=0)) > 4
    other = FeaturePictures(clip, model=tiny, size=(96, 128), device="cpu", n_fit_frames=3)
    np.testing.assert_array_equal(other.pca_picture(0), late_first)  # one basis per video, not per frame
    sample = torch.stack([pictures.features(t) for t in (0, 2, 5)])  # frames 0, middle, last
    torch.testing.assert_close(pictures.basis.components, fit_pca(sample).components)


def test_features_are_the_propagation_features_at_the_propagation_working_size(clip, tiny):
    pictures = FeaturePictures(clip, model=tiny, preset="davis", device="cpu")
    assert pictures.encoder.size == working_size((96, 128), get_preset("davis"), 16) == (480, 880)
    pictures = FeaturePictures(clip, model=tiny, size=(64, 100), device="cpu")
    expected = FrameEncoder(tiny, (64, 96), torch.device("cpu"))([clip[2]])[0]
    torch.testing.assert_close(pictures.features(2), expected, rtol=0, atol=0)


def test_pictures_open_the_video_as_the_propagation_does_preset_checked_before_the_model_loads(clip, monkeypatch):
    import tcore.models

    monkeypatch.setattr(tcore.models, "load_backbone", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match="preset='nope'"):
        FeaturePictures(clip, preset="nope")


def test_correspondence_map_peaks_at_the_clicked_point_in_frame_0(clip, tiny):
    pictures = FeaturePictures(clip, model=tiny, size=(96, 128), device="cpu")
    for point in [(5, 7), (70.5, 40), (127, 95)]:
        cell = pictures.cell(point)
        scores = pictures.affinity(0, point)
        assert divmod(int(scores.argmax()), scores.shape[1]) == cell
        assert scores.max().item() == pytest.approx(1.0, abs=1e-5)
    scores = pictures.affinity(3, (70, 40))
    f0, f3 = pictures.features(0), pictures.features(3)
    torch.testing.assert_close(scores, (f3.reshape(-1, 64) @ f0[pictures.cell((70, 40))]).reshape(6, 8))


def test_cells_follow_the_resize_and_points_outside_the_frame_are_refused(clip, tiny):
    pictures = FeaturePictures(clip, model=tiny, size=(48, 64), device="cpu")  # frames shrink by 2
    assert pictures.grid == (3, 4)
    assert pictures.cell((0, 0)) == (0, 0)
    assert pictures.cell((31, 31)) == (0, 0) and pictures.cell((32, 32)) == (1, 1)
    assert pictures.cell((127, 95)) == (2, 3)
    assert pictures.cell_centre((1, 1)) == (47.5, 47.5)
    with pytest.raises(ValueError, match=r"outside the 128x96 frame"):
        pictures.cell((128, 10))


def test_correspondence_picture_marks_the_best_cell_on_the_frame(clip, tiny):
    pictures = FeaturePictures(clip, model=tiny, size=(96, 128), device="cpu")
    picture = pictures.correspondence_picture(4, (40, 30))  # frame 4 is frame 0: best cell = clicked cell
    assert picture.shape == (96, 128, 3) and picture.dtype == np.uint8
    x, y = pictures.cell_centre(pictures.cell((40, 30)))
    radius = max(4, round(96 / 40))
    ring = picture[round(y), round(x) + radius - 1:round(x) + radius + 2]
    assert (ring == 255).all(axis=-1).any()  # the white ring passes through the cell's centre row


def test_heat_colours_run_from_dark_to_bright_and_clip_outside_the_range():
    values = np.array([-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0])
    rgb = heat_colours(values).astype(int)
    brightness = rgb.sum(-1)
    assert (np.diff(brightness[1:-1]) > 0).all()
    np.testing.assert_array_equal(rgb[0], rgb[1])
    np.testing.assert_array_equal(rgb[-1], rgb[-2])
    assert affinity_map(torch.tensor([1.0, 0.0]), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])).tolist() == [[0.0, 1.0]]


def test_heat_scale_is_a_labelled_bar_from_cosine_0_to_1_in_the_bottom_right_corner():
    grey = np.full((240, 320, 3), 128, np.uint8)
    shown = draw_heat_scale(grey)
    rows, cols = np.nonzero((shown != grey).any(-1))
    assert rows.min() > 0.85 * 240 and cols.min() > 0.5 * 320  # one line, in the corner
    dark, bright = (0, 0, 4), (252, 253, 191)  # heat_colours(0), heat_colours(1)
    row = next(r for r in range(240) if (shown[r] == dark).all(-1).any())
    start, stop = np.flatnonzero((shown[row] == dark).all(-1))[0], np.flatnonzero((shown[row] == bright).all(-1))[-1]
    bar = shown[row, start:stop + 1].astype(int)
    assert stop - start >= 24 and (np.diff(bar.sum(-1)) >= 0).all()  # dark (0) -> bright (1), left to right
    white = (shown > 200).all(-1)  # white text (anti-aliased)
    assert white[:, :start].any() and white[:, stop + 1:].any()  # the labels: "cosine 0" left, "1" right
    small = np.zeros((30, 40, 3), np.uint8)
    np.testing.assert_array_equal(draw_heat_scale(small), small)  # no room: unchanged


def test_correspondence_pictures_carry_the_heat_scale(clip, tiny):
    picture = FeaturePictures(clip, model=tiny, size=(64, 96)).correspondence_picture(1, (40, 30))
    for end in ((0, 0, 4), (252, 253, 191)):  # the bar's ends: never produced by blending over a frame
        assert (picture == end).all(-1).any()


def test_tcore_features_writes_the_pca_and_the_point_videos(clip, tiny, tmp_path, capsys):
    tiny.save_pretrained(tmp_path / "tiny")
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(clip):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    args = [str(folder), "--model", str(tmp_path / "tiny"), "--size", "96", "128", "--quiet"]
    assert main(["features", *args, "-o", str(tmp_path / "pca.gif"), "--pca"]) == 0
    assert main(["features", *args, "-o", str(tmp_path / "point.gif"), "--point", "40", "30"]) == 0
    assert "wrote" in capsys.readouterr().out
    for name in ("pca.gif", "point.gif"):
        with Image.open(tmp_path / name) as gif:
            assert gif.n_frames == 6 and gif.size == (256, 96)  # [frame | picture]
    with Image.open(tmp_path / "point.gif") as gif:
        gif.seek(4)  # frame 4 = frame 0: the right panel's ring sits where the left one does
        both = np.asarray(gif.convert("RGB"))
    left, right = (both[:, :128] > 240).all(-1), (both[:, 128:] > 240).all(-1)  # the white rings
    assert left.sum() > 20 and (left & right).sum() >= 0.9 * left.sum()


def test_tcore_features_refuses_a_point_outside_the_frame(clip, tiny, tmp_path, capsys):
    tiny.save_pretrained(tmp_path / "tiny")
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(clip[:2]):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    code = main(["features", str(folder), "-o", str(tmp_path / "x.gif"), "--point", "500", "3",
                 "--model", str(tmp_path / "tiny"), "--quiet"])
    assert code == 1
    assert "point: (x, y) = (500, 3) lies outside the 128x96 frame" in capsys.readouterr().err
    assert not (tmp_path / "x.gif").exists()


def test_write_images_writes_any_pictures_and_leaves_no_file_on_error(tmp_path):
    pictures = [np.full((8, 12, 3), 40 * t, np.uint8) for t in range(3)]
    out = tcore.io.write_images(tmp_path / "p.gif", iter(pictures), fps=5)
    with Image.open(out) as gif:
        assert gif.n_frames == 3 and gif.size == (12, 8) and gif.info["duration"] == 200
    with pytest.raises(ValueError, match="end it with .gif"):
        tcore.io.write_images(tmp_path / "p.png", pictures)
    with pytest.raises(ValueError, match="frame 1 has size"):
        tcore.io.write_images(tmp_path / "bad.gif", [pictures[0], np.zeros((4, 4, 3), np.uint8)])
    assert not (tmp_path / "bad.gif").exists()
