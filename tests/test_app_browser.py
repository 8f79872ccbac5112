"""`tcore app` in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) driven
by Selenium against a `tcore app` server started on a free local port with a tiny random model.

Needs the test extra (Gradio, Selenium) and Chromium with its driver. Without them the tests skip
and say what is missing; `.ci/run` installs them and sets TCORE_REQUIRE_BROWSER=1, which turns
such a skip into a failure. A screenshot of the page is saved in TCORE_TEST_ARTIFACTS (default: a
folder under pytest's temporary directory).
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tcore
from tcore.demo import make_demo_clip
from tcore.pictures import FeaturePictures

from helpers import free_port

pytestmark = pytest.mark.browser

_CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-dev-shm-usage", "--window-size=1400,1000"]
_WAIT = 90  # seconds for any one step of the page


def _require(what: str, found: object, fix: str) -> None:
    """Skip when a browser-test dependency is missing, or fail when TCORE_REQUIRE_BROWSER=1 (CI)."""
    if found:
        return
    reason = f"browser test: {what} not found; {fix}"
    if os.environ.get("TCORE_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " (TCORE_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _find_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny random model, the demo clip (small) as an mp4, its first mask, and bad uploads."""
    root = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2).save_pretrained(root / "tiny")
    frames, masks = make_demo_clip(n_frames=10, size=(240, 320), seed=1)
    tcore.io.write_images(root / "clip.mp4", list(frames), fps=10)
    tcore.io.write_mask(root / "first.png", masks[0])
    tcore.io.write_mask(root / "small.png", masks[0][::2, ::2])  # half the frame size
    ramp = np.linspace(0, 255, 320)[None].repeat(240, 0).astype(np.uint8)
    Image.fromarray(ramp, "L").save(root / "soft.png")  # a soft mask: 255 grey levels
    (root / "notes.mp4").write_bytes(os.urandom(4096))  # not a video
    return root


@pytest.fixture(scope="module")
def server(files):
    """`tcore app` on a free port of 127.0.0.1, with the tiny model selected."""
    _require("Gradio", _find_module("gradio"), 'pip install -e ".[test]"')
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(files / "gradio")}
    log = open(files / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "tcore", "app", "--port", str(port), "--model",
                                str(files / "tiny"), "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                               env=env, cwd=files)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + _WAIT
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"tcore app did not start: {(files / 'server.log').read_text()}")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, artifacts):
    """Headless Chromium; downloads go to `browser.downloads`, screenshots to `browser.artifacts`."""
    _require("Selenium", _find_module("selenium"), 'pip install -e ".[test]"')
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    _require("Chromium", chromium and driver_path, "apt-get install chromium chromium-driver")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*_CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.downloads, driver.artifacts = downloads, artifacts
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("TCORE_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ------------------------------------------------------------------------------------ page helpers

def _by():
    from selenium.webdriver.common.by import By

    return By


def _wait(browser, condition, what: str, timeout: float = _WAIT, last_seen=None):
    """Poll `condition()` until it returns something truthy; on a timeout, save a screenshot and fail
    (with `last_seen()` in the message, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            shot = browser.artifacts / f"timeout-{re.sub(r'[^a-z0-9]+', '-', what.lower())}.png"
            browser.save_screenshot(str(shot))
            seen = f"; last seen: {last_seen()}" if last_seen else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (page: {shot}; messages in the "
                        f"page: {_error_toasts(browser)}{seen})")
        time.sleep(0.3)


def _open(browser, url: str) -> None:
    browser.get(url)
    _wait(browser, lambda: browser.find_elements(_by().ID, "run-button"), "the page")


def _upload(browser, elem_id: str, path: Path) -> None:
    browser.find_element(_by().CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys(str(path))


def _links(browser, elem_id: str) -> dict[str, str]:
    """File name -> URL of the files shown by a File component."""
    hrefs = browser.execute_script(f"return [...document.querySelectorAll('#{elem_id} a[href]')].map(a => a.href)")
    return {href.rsplit("/", 1)[-1]: href for href in hrefs}


def _error_toasts(browser) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll(\"[data-testid='toast-body']\")].map(t => t.innerText)")


def _close_toasts(browser) -> None:
    for button in browser.find_elements(_by().CSS_SELECTOR, "[data-testid='toast-close']"):
        button.click()
    _wait(browser, lambda: not _error_toasts(browser), "the error messages to close")


def _open_video(browser, url: str, video: Path) -> None:
    _open(browser, url)
    _upload(browser, "video-upload", video)
    _wait(browser, lambda: "10 frames" in browser.find_element(_by().ID, "video-info").text, "the video")


def _set_size(browser, height: int, width: int) -> None:
    for elem_id, value in (("height", height), ("width", width)):
        box = browser.find_element(_by().CSS_SELECTOR, f"#{elem_id} input")
        box.clear()
        box.send_keys(str(value))
    browser.find_element(_by().ID, "video-info").click()  # blur: the numbers are committed


def _src(browser, selector: str) -> str | None:
    """The `src` of the first element matching `selector` (read in one step: the page re-renders)."""
    return browser.execute_script(f"return document.querySelector({selector!r})?.src ?? null")


def _fetch_png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())))


def _type_number(browser, box, value: int) -> None:
    """Type `value` in a slider's number box and leave it: the slider is released once, at `value`
    (WebDriver's clear() would leave the box too, and release the slider at an empty value first)."""
    from selenium.webdriver.common.keys import Keys

    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value))
    browser.find_element(_by().TAG_NAME, "h1").click()  # blur


def _fetch_zip(url: str) -> dict[str, np.ndarray]:
    """{name: ids} of the PNGs in a zip the page offers."""
    with urllib.request.urlopen(url) as response:
        return _read_zip(io.BytesIO(response.read()))


def _read_zip(source) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(source) as z:
        return {n: np.asarray(Image.open(z.open(n))) for n in sorted(z.namelist())}


def _stroke(browser, elem_id: str, points, size=(240, 320)) -> None:
    """One brush (or eraser) stroke through frame (x, y) pixels on the mask editor `elem_id`."""
    from selenium.webdriver.common.action_chains import ActionChains

    editor = browser.find_element(_by().ID, elem_id)
    canvas = editor.find_elements(_by().TAG_NAME, "canvas")[-1]
    scale = int(re.search(r"(\d+)%", editor.text).group(1)) / 100  # screen px per frame px
    centre = np.array([size[1] / 2, size[0] / 2])  # the frame is centred in the canvas
    offsets = [np.rint((np.array(p) - centre) * scale).astype(int).tolist() for p in points]
    actions = ActionChains(browser, duration=10)  # fast moves: the brush joins the points with lines
    actions.move_to_element_with_offset(canvas, *offsets[0]).click_and_hold()
    for dx, dy in offsets[1:]:
        actions.move_to_element_with_offset(canvas, dx, dy)
    actions.release().perform()


def _fill(browser, elem_id: str, x0: float, x1: float, y0: float, y1: float) -> None:
    """A zig-zag of 4 lines that covers the rectangle (brush radius 12 px)."""
    _stroke(browser, elem_id, [(x, y) for y in np.linspace(y0, y1, 4) for x in (x0, x1)])


# ------------------------------------------------------------------------------------------- tests

def test_app_propagates_an_uploaded_clip_exactly_as_the_api(server, browser, files, artifacts):
    _open_video(browser, server, files / "clip.mp4")
    _upload(browser, "mask-upload", files / "first.png")
    _wait(browser, lambda: "first.png" in _links(browser, "first-mask-file"), "the first mask")
    _set_size(browser, 240, 320)
    browser.find_element(_by().ID, "run-button").click()
    links = _wait(browser, lambda: "masks.zip" in _links(browser, "downloads") and _links(browser, "downloads"),
                  "the downloads")
    video = _wait(browser, lambda: _src(browser, "#overlay video"), "the overlay video")
    assert video.endswith("overlay.mp4") and "overlay.mp4" in links
    decoded = "return document.querySelector('#overlay video').readyState >= 2"  # H.264 that Chromium plays
    _wait(browser, lambda: browser.execute_script(decoded), "the browser to decode the overlay video")
    assert "Propagated 2 object(s) through 10 frames" in browser.find_element(_by().ID, "status").text
    browser.save_screenshot(str(artifacts / "app_propagate.png"))

    got = _download_masks(browser)
    assert list(got) == [f"masks/{t:05d}.png" for t in range(10)]
    expected = tcore.propagate_masks(files / "clip.mp4", files / "first.png", model=str(files / "tiny"),
                                     size=(240, 320), device="cpu", progress=False)
    np.testing.assert_array_equal(np.stack(list(got.values())), expected)
    _correct_a_frame(browser, files, artifacts, expected)


def _download_masks(browser) -> dict[str, np.ndarray]:
    """Download masks.zip from the page (a real download, replacing an earlier one) and read it."""
    archive = browser.downloads / "masks.zip"
    archive.unlink(missing_ok=True)
    browser.find_element(_by().CSS_SELECTOR, "#downloads a[href$='masks.zip']").click()
    _wait(browser, archive.is_file, "the masks.zip download")
    return _read_zip(archive)


def _correct_a_frame(browser, files: Path, artifacts: Path, before: np.ndarray) -> None:
    """After a run: paint object 1 again on frame 3 and Propagate from here; every frame equals the
    API's `propagate_masks(video, {0: first, 3: correction})`, where the correction is the page's
    own (downloaded as given.zip), and the correction holds what was painted, nothing else."""
    by, k = _by(), 3
    box = _wait(browser, lambda: browser.find_elements(by.CSS_SELECTOR, "#correct-t input[type=number]"),
                "the correction step")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    _type_number(browser, box, k)
    _wait(browser, lambda: f"Frame {k} with its current masks" in browser.find_element(by.ID, "correction-editor").text,
          "frame 3 in the correction editor")
    x0, x1, y0, y1 = 100, 146, 105, 165  # inside object 1 at frame 3 (the first colour, the brush's default)
    _fill(browser, "correction-editor", x0, x1, y0, y1)
    overlay_before = _src(browser, "#overlay video")
    browser.find_element(by.ID, "correct-button").click()
    _wait(browser, lambda: f"Corrected frame {k}" in browser.find_element(by.ID, "status").text, "the correction")
    assert f"frames {k}-9 propagated again" in browser.find_element(by.ID, "status").text
    assert _src(browser, "#overlay video") != overlay_before  # the overlay follows
    given = _fetch_zip(_links(browser, "downloads")["given.zip"])
    assert list(given) == ["given/00000.png", f"given/{k:05d}.png"]
    np.testing.assert_array_equal(given["given/00000.png"], tcore.read_mask(files / "first.png")[0])
    correction = given[f"given/{k:05d}.png"]
    assert (correction[y0 + 2:y1 - 1, x0 + 2:x1 - 1] == 1).all()  # the rectangle, painted
    outside = np.ones_like(correction, dtype=bool)
    outside[y0 - 14:y1 + 15, x0 - 14:x1 + 15] = False  # grown by the brush radius (+2)
    assert not correction[outside].any()  # nothing else: the masks drawn on the frame are not painted
    got = np.stack(list(_download_masks(browser).values()))
    expected = tcore.propagate_masks(files / "clip.mp4", {0: files / "first.png", k: correction},
                                     model=str(files / "tiny"), size=(240, 320), device="cpu", progress=False)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[:k], before[:k])  # frames before the correction are unchanged
    assert not np.array_equal(got[k:], before[k:])
    _screenshot_whole_tab(browser, artifacts / "app_correction.png")


def _screenshot_whole_tab(browser, path: Path) -> None:
    """A screenshot of the page, once no component is busy, in a window tall enough for the whole
    tab (the window's size is restored)."""
    busy = "return [...document.querySelectorAll('.wrap.full')].filter(w => !w.classList.contains('hide')).length"
    _wait(browser, lambda: browser.execute_script(busy) == 0, "the page to be idle")
    size = browser.get_window_size()
    browser.set_window_size(size["width"], 1900)
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(1)  # the editor draws its new picture (for the screenshot only: nothing is checked on it)
    browser.save_screenshot(str(path))
    browser.set_window_size(size["width"], size["height"])


def test_app_paints_several_objects_with_the_brush_and_the_eraser(server, browser, files, artifacts):
    by = _by()
    _open_video(browser, server, files / "clip.mp4")
    editor = browser.find_element(by.ID, "mask-editor")
    _fill(browser, "mask-editor", 60, 120, 60, 110)  # object 1, the first colour
    browser.find_element(by.CSS_SELECTOR, "#mask-editor button[aria-label='Color']").click()
    swatches = _wait(browser, lambda: editor.find_elements(by.CSS_SELECTOR, "menu.swatch button.color"), "the colours")
    swatches[1].click()
    browser.find_element(by.TAG_NAME, "h1").click()  # closes the swatches
    _fill(browser, "mask-editor", 200, 260, 140, 190)  # object 2, the second colour
    browser.find_element(by.CSS_SELECTOR, "#mask-editor button[aria-label='Erase']").click()
    _stroke(browser, "mask-editor", [(90, 40), (90, 130)])  # erase a vertical band through object 1

    outside = np.ones((240, 320), dtype=bool)
    outside[60 - 14:110 + 15, 60 - 14:120 + 15] = False  # each rectangle grown by the brush radius (+2)
    outside[140 - 14:190 + 15, 200 - 14:260 + 15] = False
    expected = {  # region: (pixels, id): the fraction of the region's pixels with that id must be 1
        "object 1, left of the band": (np.s_[62:109, 62:70], 1),
        "object 1, right of the band": (np.s_[62:109, 110:119], 1),
        "the band erased (eraser radius 16 px)": (np.s_[60:111, 80:101], 0),
        "object 2": (np.s_[142:189, 202:259], 2),
        "nothing outside the rectangles": (outside, 0),
    }
    seen: dict[str, object] = {}

    def painted():  # the page's first mask (PNG), once every stroke has reached it
        link = _links(browser, "first-mask-file").get("first_mask.png")
        if not link:
            return None
        ids = _fetch_png(link)
        seen.clear()
        if ids.shape != (240, 320):
            seen["shape"] = ids.shape
            return None
        seen.update({name: float((ids[where] == value).mean()) for name, (where, value) in expected.items()})
        return [ids] if min(seen.values()) == 1.0 else None

    ids = _wait(browser, painted, "the painted first mask", last_seen=lambda: seen)[0]
    assert set(np.unique(ids)) == {0, 1, 2}
    browser.save_screenshot(str(artifacts / "app_paint.png"))


def test_app_shows_the_api_message_for_bad_uploads_and_keeps_working(server, browser, files):
    by = _by()
    _open(browser, server)
    _upload(browser, "video-upload", files / "notes.mp4")  # not a video
    message = _wait(browser, lambda: _error_toasts(browser), "the error for a file that is not a video")[0]
    assert "notes.mp4' could not be opened as a video" in message  # read_video's own message
    _close_toasts(browser)

    _upload(browser, "video-upload", files / "clip.mp4")  # the next upload works
    _wait(browser, lambda: "10 frames" in browser.find_element(by.ID, "video-info").text, "the video")
    _upload(browser, "mask-upload", files / "soft.png")
    message = _wait(browser, lambda: _error_toasts(browser), "the error for a soft mask")[0]
    with pytest.raises(ValueError) as api:
        tcore.read_mask(files / "soft.png")
    assert str(api.value).split("looks like a soft mask")[1] in message  # after the file's path
    assert not _links(browser, "first-mask-file")  # a rejected mask is not used
    _close_toasts(browser)

    _upload(browser, "mask-upload", files / "small.png")  # half the frame size: refused when run
    _wait(browser, lambda: "small.png" in _links(browser, "first-mask-file"), "the small mask")
    _set_size(browser, 240, 320)
    browser.find_element(by.ID, "run-button").click()
    message = _wait(browser, lambda: _error_toasts(browser), "the error for a mask of another size")[0]
    with pytest.raises(ValueError) as api:
        tcore.propagate_masks(files / "clip.mp4", files / "small.png", model=str(files / "tiny"), device="cpu",
                              progress=False)
    assert str(api.value).split("': ", 1)[1] in message  # after the file's path (the upload's copy in the app)
    _close_toasts(browser)

    browser.find_element(by.CSS_SELECTOR, "#mask-upload button[aria-label='Clear']").click()
    _upload(browser, "mask-upload", files / "first.png")  # and the right mask runs
    _wait(browser, lambda: "first.png" in _links(browser, "first-mask-file"), "the first mask")
    browser.find_element(by.ID, "run-button").click()
    _wait(browser, lambda: "masks.zip" in _links(browser, "downloads"), "the downloads after the errors")
    assert not _error_toasts(browser)


def test_app_features_view_shows_pca_and_the_clicked_point_correspondence(server, browser, files, artifacts):
    from selenium.webdriver.common.action_chains import ActionChains

    by = _by()
    _open_video(browser, server, files / "clip.mp4")
    _set_size(browser, 240, 320)
    browser.find_element(by.XPATH, "//button[@role='tab' and contains(., 'Features')]").click()
    browser.find_element(by.ID, "features-button").click()
    pca_src = _wait(browser, lambda: _src(browser, "#pca img"), "the PCA picture")
    heat_before = _src(browser, "#heat img")
    query = browser.find_element(by.CSS_SELECTOR, "#query-frame img")
    width, height = query.size["width"], query.size["height"]
    ActionChains(browser).move_to_element_with_offset(query, round(-width / 2 + width * 104 / 320),
                                                      round(-height / 2 + height * 56 / 240)).click().perform()
    heat_src = _wait(browser, lambda: _src(browser, "#heat img") not in (heat_before, None)
                     and _src(browser, "#heat img"), "the correspondence map of the clicked point")
    heat, pca = _fetch_png(heat_src), _fetch_png(pca_src)
    assert heat.shape == pca.shape == (240, 320, 3)

    _type_number(browser, browser.find_element(by.CSS_SELECTOR, "#frame-t input[type=number]"), 6)  # t = 6
    pca6_src = _wait(browser, lambda: _src(browser, "#pca img") not in (pca_src, None) and _src(browser, "#pca img"),
                     "the pictures of frame 6")
    heat6 = _fetch_png(_src(browser, "#heat img"))

    pictures = FeaturePictures(files / "clip.mp4", model=str(files / "tiny"), size=(240, 320), device="cpu")
    np.testing.assert_array_equal(pca, pictures.pca_picture(0))
    np.testing.assert_array_equal(_fetch_png(pca6_src), pictures.pca_picture(6))
    # (104, 56) is the centre of a 16x16 cell: a click off by a pixel picks the same cell
    np.testing.assert_array_equal(heat, pictures.correspondence_picture(0, (104, 56)))
    np.testing.assert_array_equal(heat6, pictures.correspondence_picture(6, (104, 56)))
    browser.save_screenshot(str(artifacts / "app_features.png"))
