"""The web app's work without a browser (`tcore.app.jobs`), its error display and its command line.

The page itself is tested in a real browser in `test_app_browser.py`.
"""
from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import tcore
from tcore.app.jobs import OBJECT_COLOURS, ModelCache, ids_from_layers, parse_size, propagate_to_files, \
    write_demo_clip
from tcore.cli import main
from tcore.demo import make_demo_clip


def _layer(size: tuple[int, int], *painted: tuple) -> np.ndarray:
    """An RGBA layer with `(where, rgba)` regions painted."""
    layer = np.zeros((*size, 4), np.uint8)
    for where, rgba in painted:
        layer[where] = rgba
    return layer


def test_painted_layers_become_ids_by_the_nearest_brush_colour():
    first = _layer((20, 30), (np.s_[0:10, 0:10], (*OBJECT_COLOURS[0], 255)),
                   (np.s_[10:20, 0:10], (*OBJECT_COLOURS[2], 255)),
                   (np.s_[0:5, 20:30], (140, 10, 5, 200)),  # anti-aliased brush edge: nearest is object 1
                   (np.s_[5:10, 20:30], (*OBJECT_COLOURS[1], 100)))  # fainter than half: background
    second = _layer((20, 30), (np.s_[0:20, 5:8], (*OBJECT_COLOURS[7], 255)))  # painted over the first
    ids = ids_from_layers([first, second], (20, 30))
    assert ids.dtype == np.uint8
    assert (ids[0:10, 0:5] == 1).all() and (ids[10:20, 0:5] == 3).all() and (ids[:, 5:8] == 8).all()
    assert (ids[0:5, 20:30] == 1).all() and not ids[5:10, 20:30].any() and not ids[:, 10:20].any()
    assert not ids_from_layers([], (20, 30)).any()


def test_a_painted_layer_of_another_size_is_refused():
    with pytest.raises(ValueError, match="does not match the 30x20 frames"):
        ids_from_layers([np.zeros((10, 30, 4), np.uint8)], (20, 30))


def test_object_colours_are_the_davis_palette_so_written_masks_keep_the_painted_colours():
    assert OBJECT_COLOURS[:3] == [(128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert [tuple(c) for c in tcore.io.DAVIS_PALETTE[1:9]] == OBJECT_COLOURS


def test_parse_size_takes_both_sides_or_none():
    assert parse_size(0, 0) is None and parse_size(None, None) is None
    assert parse_size(240.0, 320) == (240, 320)
    with pytest.raises(ValueError, match="give both the height and the width"):
        parse_size(240, 0)


def test_model_cache_loads_once_and_random_weights_are_seeded():
    cache = ModelCache()
    model = cache.get("random:tcore_vits16", "cpu")
    assert cache.get(" random:tcore_vits16 ", "cpu") is model and not model.training
    again = ModelCache().get("random:tcore_vits16", "cpu")
    torch.testing.assert_close(again.state_dict(), model.state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="random weights exist for random:tcore_vits16"):
        cache.get("random:vit_huge", "cpu")


def test_propagate_to_files_writes_what_propagate_masks_returns(tmp_path, tiny_backbone):
    frames, masks = make_demo_clip(n_frames=5, size=(64, 96), seed=4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"f{t}.png")
    seen = []
    result = propagate_to_files(str(folder), masks[0], tmp_path / "run", model=tiny_backbone, preset=None,
                                size=(64, 96), device="cpu", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(t, 5) for t in range(1, 6)]
    assert (result.n_frames, result.n_objects) == (5, 2)
    with zipfile.ZipFile(result.masks_zip) as z:
        names = z.namelist()
        got = np.stack([np.asarray(Image.open(z.open(n))) for n in names])
    assert names == [f"masks/f{t}.png" for t in range(5)]
    expected = tcore.propagate_masks(str(folder), masks[0], model=tiny_backbone, size=(64, 96), device="cpu",
                                     progress=False)
    np.testing.assert_array_equal(got, expected)
    assert len(tcore.read_video(result.overlay)) == 5


def test_propagate_to_files_raises_the_api_message(tmp_path, tiny_backbone):
    frames, masks = make_demo_clip(n_frames=3, size=(64, 96), seed=4)
    with pytest.raises(ValueError) as api:
        tcore.propagate_masks(frames, masks[0][:32], model=tiny_backbone, progress=False)
    with pytest.raises(ValueError) as app:
        propagate_to_files(frames, masks[0][:32], tmp_path / "run", model=tiny_backbone, preset=None, size=None,
                           device="cpu")
    assert str(app.value) == str(api.value)


def test_write_demo_clip_is_the_demo_clip_and_its_first_mask(tmp_path):
    folder, mask = write_demo_clip(tmp_path)
    frames, masks = make_demo_clip()
    video = tcore.read_video(folder)
    assert len(video) == len(frames)
    np.testing.assert_array_equal(video[3], frames[3])
    np.testing.assert_array_equal(tcore.read_mask(mask)[0], masks[0])


def test_page_handlers_show_tcore_errors_as_their_own_message():
    gr = pytest.importorskip("gradio")
    from tcore.app.ui import _shown

    def handler(path):
        return tcore.read_video(path)

    with pytest.raises(gr.Error) as shown:
        _shown(handler)("/no/such/video.mp4")
    with pytest.raises(FileNotFoundError) as api:
        tcore.read_video("/no/such/video.mp4")
    assert shown.value.message == str(api.value)


def test_a_bug_in_a_page_handler_keeps_its_traceback():
    gr = pytest.importorskip("gradio")
    from tcore.app.ui import _shown

    def broken():
        raise ValueError("an internal invariant broke")

    with pytest.raises(ValueError, match="an internal invariant broke") as raised:
        _shown(broken)()
    assert not isinstance(raised.value, gr.Error)  # not shown in the page as the user's mistake


def test_build_app_makes_the_page_with_the_chosen_model():
    pytest.importorskip("gradio")
    from tcore.app import build_app

    page = build_app(model="random:tcore_vits16", device="cpu")
    config = page.get_config_file()
    by_id = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
    assert by_id["model"]["value"] == "random:tcore_vits16"
    assert by_id["device"]["value"] == "cpu"
    for elem_id in ("video-upload", "demo-button", "mask-editor", "mask-upload", "run-button", "overlay",
                    "downloads", "frame-t", "query-frame", "heat", "pca"):
        assert elem_id in by_id


def test_space_entry_builds_the_page(monkeypatch):
    gr = pytest.importorskip("gradio")
    monkeypatch.setenv("TCORE_MODEL", "random:tcore_vits16")
    monkeypatch.delitem(sys.modules, "tcore.app.space", raising=False)
    from tcore.app import space

    assert isinstance(space.demo, gr.Blocks) and set(space.launch_options()) == {"theme"}
    models = [c["props"]["value"] for c in space.demo.get_config_file()["components"]
              if c.get("props", {}).get("elem_id") == "model"]
    assert models == ["random:tcore_vits16"]


def test_tcore_app_without_gradio_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    monkeypatch.delitem(sys.modules, "tcore.app.ui", raising=False)
    assert main(["app", "--port", "1"]) == 1
    assert 'pip install "tcore[app]"' in capsys.readouterr().err
