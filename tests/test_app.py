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
from tcore.app.jobs import OBJECT_COLOURS, RANDOM_PREFIX, ModelCache, SessionRun, ids_from_layers, parse_size, \
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


def _clip_folder(root, n_frames: int, size: tuple[int, int], name: str = "f{t}"):
    """The demo clip as a folder of PNG frames named `name`, and its masks."""
    frames, masks = make_demo_clip(n_frames=n_frames, size=size, seed=4)
    folder = root / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{name.format(t=t)}.png")
    return str(folder), masks


def _zipped(path) -> dict[str, np.ndarray]:
    """{name: ids} of the PNGs in a zip."""
    with zipfile.ZipFile(path) as z:
        return {n: np.asarray(Image.open(z.open(n))) for n in z.namelist()}


def test_session_run_writes_what_propagate_masks_returns(tmp_path, tiny_backbone):
    folder, masks = _clip_folder(tmp_path, 5, (64, 96))
    seen = []
    run = SessionRun(folder, tmp_path / "run", model=tiny_backbone, preset=None, size=(64, 96), device="cpu")
    result = run.run(masks[0], progress=lambda done, total: seen.append((done, total)))
    assert seen == [(t, 5) for t in range(1, 6)]
    assert (result.n_frames, result.n_objects, result.updated) == (5, 2, (0, 1, 2, 3, 4))
    got = _zipped(result.masks_zip)
    assert list(got) == [f"masks/f{t}.png" for t in range(5)]
    expected = tcore.propagate_masks(folder, masks[0], model=tiny_backbone, size=(64, 96), device="cpu",
                                     progress=False)
    np.testing.assert_array_equal(np.stack(list(got.values())), expected)
    np.testing.assert_array_equal(run.masks, expected)
    given = _zipped(result.given_zip)
    assert list(given) == ["given/f0.png"] and np.array_equal(given["given/f0.png"], masks[0])
    assert len(tcore.read_video(result.overlay)) == 5
    run.close()
    assert run.closed and not (tmp_path / "run").exists()


def test_session_run_raises_the_api_message_and_keeps_the_last_run(tmp_path, tiny_backbone):
    folder, masks = _clip_folder(tmp_path, 3, (64, 96))
    with pytest.raises(ValueError) as api:
        tcore.propagate_masks(folder, masks[0][:32], model=tiny_backbone, progress=False)
    run = SessionRun(folder, tmp_path / "run", model=tiny_backbone, preset=None, size=None, device="cpu")
    with pytest.raises(ValueError, match="click Propagate first"):
        run.correct(1, masks[1])
    first = run.run(masks[0])
    with pytest.raises(ValueError) as app:
        run.run(masks[0][:32])
    assert str(app.value) == str(api.value)
    assert run.session.annotations.keys() == {0} and run.masks is not None  # the last run stands
    with pytest.raises(ValueError, match="correction at frame 1: nothing painted"):
        run.correct(1, np.zeros_like(masks[1]))
    assert first.overlay.is_file()
    run.close()


def test_a_correction_at_a_frame_with_a_mask_replaces_only_the_painted_objects(tmp_path, tiny_backbone):
    folder, masks = _clip_folder(tmp_path, 4, (64, 96))
    run = SessionRun(folder, tmp_path / "run", model=tiny_backbone, preset=None, size=(64, 96), device="cpu")
    run.run(masks[0])
    painted = np.zeros_like(masks[0])
    painted[5:25, 10:40] = 1  # object 1 painted again on frame 0, elsewhere; object 2 not painted
    result = run.correct(0, painted)
    merged = np.where(painted == 1, 1, np.where(masks[0] == 1, 0, masks[0]))
    assert (merged == 2).any() and np.array_equal(run.session.annotations[0], merged)
    assert result.updated == (0, 1, 2, 3)
    expected = tcore.propagate_masks(folder, merged, model=tiny_backbone, size=(64, 96), device="cpu", progress=False)
    np.testing.assert_array_equal(run.masks, expected)
    run.close()


def test_what_the_api_logs_during_a_run_reaches_the_result(tmp_path, tiny_backbone):
    folder, masks = _clip_folder(tmp_path, 4, (64, 96))
    run = SessionRun(folder, tmp_path / "run", model=tiny_backbone, preset=None, size=(64, 96), device="cpu")
    assert run.run(masks[0]).warnings == ()
    speck = np.zeros_like(masks[0])
    speck[30:32, 40:42] = 3  # a new object of 2x2 pixels: no cell of the 4x6 grid
    result = run.correct(2, speck)
    assert len(result.warnings) == 1 and "(ids 3) cover no cell" in result.warnings[0]
    run.close()


def _page(**settings):
    """A page (its components and handlers' state) built outside a server, and the settings boxes' values."""
    gr = pytest.importorskip("gradio")
    from tcore.app.ui import _layout

    with gr.Blocks():
        page = _layout(None, "cpu")
    return page, [settings["model"], "default", settings["size"][0], settings["size"][1], "cpu"]


def _no_progress(*args, **kwargs):
    return None


def test_a_correction_in_the_page_equals_propagate_masks_with_both_masks_without_the_backbone(tmp_path,
                                                                                                   monkeypatch):
    from tcore.app.ui import correct, correction_frame, run
    from tcore.propagation.encoder import FrameEncoder

    size, k = (96, 128), 5
    folder, masks = _clip_folder(tmp_path, 8, size, name="{t:05d}")
    first = str(tcore.io.write_mask(tmp_path / "first.png", masks[0]))
    page, settings = _page(model=RANDOM_PREFIX + "tcore_vits16", size=size)
    shown = run(page, None, folder, first, 0, *settings, progress=_no_progress)
    session_run = shown[page.session_run]
    model = page.models.get(RANDOM_PREFIX + "tcore_vits16", "cpu")
    before = tcore.propagate_masks(folder, masks[0], model=model, size=size, device="cpu", progress=False)
    np.testing.assert_array_equal(np.stack(list(_zipped(shown[page.downloads][0]).values())), before)

    shown_frame = correction_frame(page, session_run, k)  # frame k, its masks drawn: the frame corrected
    shown_frame, shown_t = shown_frame[page.correction_editor], shown_frame[page.correction_t]
    assert shown_t == k and shown_frame["label"].startswith(f"Frame {k} with its current masks")
    editor = shown_frame["value"]
    np.testing.assert_array_equal(editor["background"], tcore.io.overlay(tcore.read_video(folder)[k], before[k]))
    layer = _layer(size, (masks[k] == 2, (*OBJECT_COLOURS[1], 255)))  # object 2 painted as it is at frame k
    encoded = []
    real = FrameEncoder.__call__
    monkeypatch.setattr(FrameEncoder, "__call__", lambda self, chunk: encoded.append(len(chunk)) or real(self, chunk))
    shown = correct(page, session_run, shown_t, {**editor, "layers": [layer]}, folder, *settings, progress=_no_progress)
    assert encoded == []  # every frame's features were kept from the run
    assert shown[page.status].startswith(f"Corrected frame {k}: frames {k}-7 propagated again")
    assert f"Not painted, so kept at frame {k}: object(s) 1" in shown[page.status]
    correction = np.where(masks[k] == 2, 2, 0).astype(np.uint8)
    after = tcore.propagate_masks(folder, {0: masks[0], k: correction}, model=model, size=size, device="cpu",
                                  progress=False)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(np.stack(list(_zipped(shown[page.downloads][0]).values())), after)
    given = _zipped(shown[page.downloads][2])
    assert list(given) == ["given/00000.png", f"given/{k:05d}.png"]
    np.testing.assert_array_equal(given[f"given/{k:05d}.png"], correction)
    with zipfile.ZipFile(shown[page.downloads][2]) as z:  # given.zip unpacked is a masks folder the API reads
        z.extractall(tmp_path / "downloaded")
    again = tcore.propagate_masks(folder, tmp_path / "downloaded" / "given", model=model, size=size, device="cpu",
                                  progress=False)
    np.testing.assert_array_equal(again, after)
    np.testing.assert_array_equal(shown[page.correction_editor]["value"]["background"],  # frame k, corrected
                                  tcore.io.overlay(tcore.read_video(folder)[k], after[k]))
    assert shown[page.result_video] == shown[page.downloads][1] and len(tcore.read_video(shown[page.result_video])) == 8
    session_run.close()


def test_a_new_video_or_new_settings_replace_the_session_and_mistakes_are_shown(tmp_path, tiny_model):
    gr = pytest.importorskip("gradio")
    from tcore.app.ui import clear_all, correct, run

    size = (64, 96)
    folder, masks = _clip_folder(tmp_path, 3, size)
    first = str(tcore.io.write_mask(tmp_path / "first.png", masks[0]))
    page, settings = _page(model=str(tiny_model), size=size)
    with pytest.raises(gr.Error, match="click Propagate first"):
        correct(page, None, 1, None, folder, *settings, progress=_no_progress)
    session_run = run(page, None, folder, first, 0, *settings, progress=_no_progress)[page.session_run]
    assert run(page, session_run, folder, first, 0, *settings, progress=_no_progress)[page.session_run] is session_run
    with pytest.raises(gr.Error, match="correction at frame 1: nothing painted"):
        correct(page, session_run, 1, {"layers": []}, folder, *settings, progress=_no_progress)
    other = [*settings[:3], 128, "cpu"]  # another width
    with pytest.raises(gr.Error, match="changed since the last Propagate; click Propagate"):
        correct(page, session_run, 1, {"layers": []}, folder, *other, progress=_no_progress)
    replaced = run(page, session_run, folder, first, 0, *other, progress=_no_progress)[page.session_run]
    assert replaced is not session_run and session_run.closed and not session_run.folder.exists()
    cleared = clear_all(page, replaced)  # what opening another video does first
    assert cleared[page.session_run] is None and replaced.closed and not replaced.folder.exists()


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
