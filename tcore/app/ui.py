"""The page of `tcore app`: a Gradio Blocks app over `tcore.app.jobs` and `tcore.pictures`.

Two tabs share one video and one model choice: "Propagate masks" (first mask painted or
uploaded -> overlay video, zip of masks; then corrections painted on any frame, re-propagated from
there with the features already computed: one `SessionRun` per opened video and settings) and
"Features" (PCA picture of frame t; click a point of frame 0 to see its affinity in frame t).
Errors of tcore's API reach the page as their own message and leave the page usable.

The file reads in three parts: the page (`Page`: every component, and the server-side state the
handlers share, placed by `_layout`), the handlers (module-level functions; each takes the `Page`
first and returns a mapping {component: new value}, so that a handler names what it changes), and
the wiring (`_wire`: which event runs which handler, each bound to its page by `_bound`).
"""
from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError, user_error_message

try:
    import gradio as gr
except ImportError as err:  # pragma: no cover - depends on the environment
    raise MissingDependencyError('tcore app needs Gradio, installed by the "app" extra: pip install "tcore[app]"') \
        from err

from ..io import overlay, read_mask, read_video, write_mask
from ..pictures import FeaturePictures
from .jobs import OBJECT_COLOURS, RANDOM_PREFIX, ModelCache, RunResult, SessionRun, ids_from_layers, parse_size, \
    write_demo_clip

__all__ = ["build_app", "launch_options"]

MODEL_CHOICES = [
    ("T-CoRe ViT-S/16, Kinetics-400", "tcore_vits16"),
    ("T-CoRe ViT-S/16, ImageNet-1k", "tcore_vits16.in1k"),
    ("T-CoRe ViT-B/16, Kinetics-400", "tcore_vitb16"),
    ("ViT-S/16 with random weights (no download; for trying the page)", RANDOM_PREFIX + "tcore_vits16"),
]
PRESET_CHOICES = [
    ("paper, short side 480", "default"),
    ("DAVIS: 480x880 stretched", "davis"),
    ("JHMDB: 320x320", "jhmdb"),
    ("VIP: long side 880, top-10", "vip"),
]
_INTRO = """\
# tcore · T-CoRe label propagation
Open a video, give the first frame's mask (paint it, one colour per object, or upload a PNG), and
**Propagate**: every frame gets its masks by matching T-CoRe patch features
([CVPR 2025](https://arxiv.org/abs/2503.15096)). Then correct any frame and **Propagate from here**.
The **Features** tab shows what the model sees.
"""
_CORRECTION_HELP = """\
**4 · Correct a frame**: pick it with the slider (the frame shows its current masks), paint each
object to correct **whole**, in its colour, and **Propagate from here**: the frames after it are
updated with the features already computed. A painted object takes exactly the painted pixels at
this frame; objects you do not paint keep their masks there, except where you paint another object.
"""


def launch_options() -> dict[str, Any]:
    """The page's look, for `Blocks.launch(**launch_options())` (Gradio 6 takes it at launch).

    System fonts only: the page loads nothing from the internet.
    """
    theme = gr.themes.Soft(primary_hue="orange", font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])
    return {"theme": theme}


def _shown(fn: Callable) -> Callable:
    """Run a page handler; a user's mistake (`tcore.errors.UserError`, or too little memory) is shown
    in the page as its message (and nothing changes); anything else is a bug and keeps its traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            message = user_error_message(err, memory_fix="use a smaller working size (Size), or a device with more "
                                                         "memory (Device)")
            if message is None:
                raise
            raise gr.Error(message, duration=None, title="tcore") from err
    return wrapper


def _preset(value: str | None) -> str | None:
    return None if value in (None, "", "default") else value


def _device(value: str | None) -> str | None:
    return None if value in (None, "", "auto") else value


def _device_choices() -> list[str]:
    import torch

    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        choices.append("mps")
    return choices


def _video_summary(frames: Any) -> str:
    h, w = frames.size
    fps = f", {frames.fps:g} fps" if frames.fps else ""
    return f"**{len(frames)} frames**, {w}x{h}{fps}"


# ------------------------------------------------------------------------------------ the page

@dataclass(frozen=True, eq=False)
class Page:
    """The components of one page and the server-side state its handlers share.

    Attributes:
        models: backbones loaded once per (model, device).
        workdir: the page's temporary folder (demo clip, painted masks, runs); removed with the page.
        video, frame0, pictures, pictures_key, point, session_run, correction_t: per-session state: the video's
            path, its frame 0 ((H, W, 3) uint8), the `FeaturePictures` and the settings it was made
            with, the (x, y) point of frame 0 whose correspondence is shown, the `SessionRun` of the
            last Propagate (closed when the browser session ends or another video opens), the frame
            the correction editor shows (what "Propagate from here" corrects).
        The other attributes are the components the user sees, named after what they show.
    """

    models: ModelCache
    workdir: tempfile.TemporaryDirectory
    # per-session state
    video: gr.State
    frame0: gr.State
    pictures: gr.State
    pictures_key: gr.State
    point: gr.State
    session_run: gr.State
    correction_t: gr.State
    # the video and the settings, above the tabs
    video_file: gr.File
    demo: gr.Button
    video_info: gr.Markdown
    model_box: gr.Dropdown
    preset_box: gr.Dropdown
    height_box: gr.Number
    width_box: gr.Number
    device_box: gr.Dropdown
    # "Propagate masks"
    editor: gr.ImageEditor
    mask_file: gr.File
    preview: gr.Image
    first_png: gr.File
    run_button: gr.Button
    result_video: gr.Video
    downloads: gr.File
    status: gr.Markdown
    correction: gr.Column  # shown after a run
    correct_t: gr.Slider
    correction_editor: gr.ImageEditor
    correct_button: gr.Button
    # "Features"
    frame_slider: gr.Slider
    show: gr.Button
    query: gr.Image
    heat: gr.Image
    pca: gr.Image

    @property
    def settings(self) -> list[gr.components.Component]:
        """The inputs every model run reads: model, preset, height, width, device."""
        return [self.model_box, self.preset_box, self.height_box, self.width_box, self.device_box]

    def new_folder(self, kind: str) -> Path:
        """A new folder in the page's temporary folder."""
        return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=self.workdir.name))


def _settings_row(model: str | None, device: str | None) -> dict[str, Any]:
    """The video box, the demo button and the model settings, above the tabs."""
    model_choices = list(MODEL_CHOICES)
    if model and model not in [value for _, value in model_choices]:
        model_choices.insert(0, (model, model))
    with gr.Row(equal_height=True):
        with gr.Column(scale=2):
            video_file = gr.File(label="1 · Video: mp4, webm, avi, mov, ... (or a GIF)", file_count="single",
                                 type="filepath", height=110, elem_id="video-upload")
            with gr.Row():
                demo = gr.Button("Use the demo clip", size="sm", scale=0, min_width=150, elem_id="demo-button")
                video_info = gr.Markdown("", elem_id="video-info")
        with gr.Column(scale=3):
            with gr.Row():
                model_box = gr.Dropdown(model_choices, value=model or "tcore_vits16", allow_custom_value=True,
                                        label="Model", scale=3, elem_id="model",
                                        info="a release, or type a checkpoint path, a save_pretrained folder, "
                                             "a Hub repo or a timm name")
                preset_box = gr.Dropdown(PRESET_CHOICES, value="default", label="Preset", scale=2,
                                         elem_id="preset", info="the working size and propagation settings")
            with gr.Row():
                height_box = gr.Number(0, precision=0, minimum=0, label="Height", info="0: the preset's",
                                       elem_id="height")
                width_box = gr.Number(0, precision=0, minimum=0, label="Width", info="0: the preset's",
                                      elem_id="width")
                device_box = gr.Dropdown(_device_choices(), value=device or "auto", label="Device", elem_id="device",
                                         info="auto: CUDA, then MPS, then CPU")
    return dict(video_file=video_file, demo=demo, video_info=video_info, model_box=model_box, preset_box=preset_box,
                height_box=height_box, width_box=width_box, device_box=device_box)


def _mask_editor(label: str, elem_id: str) -> gr.ImageEditor:
    """A mask painter over a frame: brush in the 8 object colours (object ids 1..8), eraser."""
    return gr.ImageEditor(
        label=label, type="numpy", image_mode="RGBA", format="png", sources=[], transforms=[], layers=False,
        height=380, buttons=[], elem_id=elem_id,
        brush=gr.Brush(colors=[f"rgb{c}" for c in OBJECT_COLOURS], color_mode="fixed", default_size=12),
        eraser=gr.Eraser(default_size=16))


def _correction_label(t: int) -> str:
    return f"Frame {t} with its current masks: paint the correction"


def _correction_row() -> dict[str, Any]:
    """Step 4, shown after a run: pick a frame, paint the correction, Propagate from here."""
    with gr.Column(visible=False, elem_id="correction") as correction:
        gr.Markdown(_CORRECTION_HELP)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                correction_editor = _mask_editor(_correction_label(0), "correction-editor")
            with gr.Column(scale=1):
                correct_t = gr.Slider(0, 1, value=0, step=1, label="Frame t to correct", elem_id="correct-t")
                correct_button = gr.Button("Propagate from here", variant="primary", elem_id="correct-button")
    return dict(correction=correction, correct_t=correct_t, correction_editor=correction_editor,
                correct_button=correct_button)


def _propagate_tab() -> dict[str, Any]:
    """The "Propagate masks" tab: paint or upload the first mask, run, watch and download."""
    with gr.Row(equal_height=False):
        with gr.Column():
            editor = _mask_editor("2 · First mask: paint it", "mask-editor")
            mask_file = gr.File(label="... or upload it (palette PNG, grey ids, colours)",
                                file_count="single", type="filepath", height=110, elem_id="mask-upload")
        with gr.Column():
            preview = gr.Image(label="The first mask Propagate uses", interactive=False, height=380,
                               format="png", buttons=[], elem_id="first-mask")
            first_png = gr.File(label="First mask (PNG)", interactive=False, height=110, elem_id="first-mask-file")
        with gr.Column():
            run_button = gr.Button("3 · Propagate", variant="primary", elem_id="run-button")
            result_video = gr.Video(label="Overlay", autoplay=True, loop=True, interactive=False,
                                    height=320, elem_id="overlay")
            downloads = gr.File(label="Downloads: masks (zip of indexed PNGs), overlay, the masks given",
                                file_count="multiple", interactive=False, height=240, elem_id="downloads")
            status = gr.Markdown("", elem_id="status")
    return dict(editor=editor, mask_file=mask_file, preview=preview, first_png=first_png, run_button=run_button,
                result_video=result_video, downloads=downloads, status=status, **_correction_row())


def _features_tab() -> dict[str, Any]:
    """The "Features" tab: frame t's PCA picture and the correspondence of a clicked point."""
    gr.Markdown("**Correspondence**: click a point of frame 0 to see its cosine affinity to every patch "
                "of frame t, the score the propagation ranks (dark: 0 or less, bright: 1; the scale is in the "
                "picture's corner). **PCA**: the first three principal components of frame t's patch features "
                "as RGB, fitted once on frames spread over the video, so colours are stable over time.")
    with gr.Row():
        frame_slider = gr.Slider(0, 1, value=0, step=1, label="Frame t", scale=4, elem_id="frame-t")
        show = gr.Button("Show features", variant="primary", scale=1, elem_id="features-button")
    with gr.Row():
        query = gr.Image(label="Frame 0: click a point", interactive=False, format="png", buttons=[],
                         elem_id="query-frame")
        heat = gr.Image(label="Its affinity in frame t", interactive=False, format="png", buttons=[], elem_id="heat")
        pca = gr.Image(label="PCA of frame t's features", interactive=False, format="png", buttons=[], elem_id="pca")
    return dict(frame_slider=frame_slider, show=show, query=query, heat=heat, pca=pca)


def _layout(model: str | None, device: str | None) -> Page:
    """Place the components (inside a `gr.Blocks` context) and gather them in a `Page`."""
    state = {name: gr.State(None) for name in ("video", "frame0", "pictures", "pictures_key", "point")}
    state["session_run"] = gr.State(None, delete_callback=_close_run)  # its features and files go with the tab
    state["correction_t"] = gr.State(None)
    gr.Markdown(_INTRO)
    settings = _settings_row(model, device)
    with gr.Tabs():
        with gr.Tab("Propagate masks", id="propagate"):
            propagate = _propagate_tab()
        with gr.Tab("Features", id="features"):
            features = _features_tab()
    workdir = tempfile.TemporaryDirectory(prefix="tcore-app-")  # removed with the page (the page holds it)
    return Page(models=ModelCache(), workdir=workdir, **state, **settings, **propagate, **features)


# ------------------------------------------------------------------------- handlers (no page code)

Updates = dict[gr.components.Component, Any]  # component -> its new value (or a gr.update)


def no_video(page: Page) -> Updates:
    """What the page shows without a video (what `open_video` changes)."""
    return {page.video: None, page.frame0: None, page.editor: None, page.video_info: "",
            page.frame_slider: gr.update(maximum=1, value=0), page.query: None, page.heat: None, page.pca: None,
            page.pictures: None}


def _close_run(session_run: SessionRun | None) -> None:
    """Close a page's `SessionRun` (another one replaces it, another video opens, or the tab is gone)."""
    if session_run is not None:
        session_run.close()


def clear_all(page: Page, session_run: SessionRun | None = None) -> Updates:
    """The page as it opens: no video, no point, no result, no correction (the last run's session is closed)."""
    _close_run(session_run)
    return {**no_video(page), page.point: None, page.result_video: None, page.downloads: None, page.status: "",
            page.session_run: None, page.correction: gr.update(visible=False), page.correction_editor: None,
            page.correction_t: None, page.correct_t: gr.update(maximum=1, value=0)}


@_shown
def open_video(page: Page, path: str | None) -> Updates:
    """Open an uploaded video: frame 0 in the editor and the query picture, the slider over its frames."""
    if not path:
        return no_video(page)
    frames = read_video(path)
    first = frames[0]
    editor = {"background": first, "layers": [], "composite": None}
    slider = gr.update(maximum=max(1, len(frames) - 1), value=0)
    return {page.video: path, page.frame0: first, page.editor: editor, page.video_info: _video_summary(frames),
            page.frame_slider: slider, page.query: first, page.heat: None, page.pca: None, page.pictures: None}


@functools.cache
def _demo_clip(workdir: str) -> tuple[str, str]:
    """(frame folder, first mask) of the demo clip, written once per page folder, on first use."""
    folder, mask = write_demo_clip(Path(tempfile.mkdtemp(prefix="demo-", dir=workdir)))
    return str(folder), str(mask)


def use_demo(page: Page) -> Updates:
    """Open the demo clip and its first mask."""
    folder, mask = _demo_clip(page.workdir.name)
    return {**open_video(page, folder), page.mask_file: mask}


def clear_first_mask(page: Page) -> Updates:
    """No first mask (while an upload is read)."""
    return {page.preview: None, page.first_png: None}


@_shown
def first_mask(page: Page, frame: np.ndarray | None, mask_file: str | None, editor: dict | None) -> Updates:
    """The first mask Propagate will use, shown and saved: the uploaded file, else the painting."""
    if frame is None:
        return clear_first_mask(page)
    if mask_file:
        ids, palette = read_mask(mask_file)
        if ids.shape != frame.shape[:2]:  # shown on black; Propagate gives the API's size error
            return {page.preview: overlay(np.zeros((*ids.shape, 3), np.uint8), ids, palette),
                    page.first_png: mask_file}
        return {page.preview: overlay(frame, ids, palette), page.first_png: mask_file}
    ids = ids_from_layers((editor or {}).get("layers") or [], frame.shape[:2])
    if not ids.any():
        return {page.preview: frame, page.first_png: None}
    return {page.preview: overlay(frame, ids),
            page.first_png: str(write_mask(page.new_folder("painted") / "first_mask.png", ids))}


def _run_key(video: str, model_name: str, preset: str, height: float, width: float, device_name: str) -> tuple:
    """What a `SessionRun` is opened with: (video, model, preset, size, device), as the API takes them."""
    return video, (model_name or "").strip(), _preset(preset), parse_size(height, width), _device(device_name)


def _files(page: Page, result: RunResult) -> Updates:
    """The overlay video and the downloads of a run or a correction."""
    return {page.result_video: str(result.overlay),
            page.downloads: [str(result.masks_zip), str(result.overlay), str(result.given_zip)]}


@_shown
def run(page: Page, session_run: SessionRun | None, video: str | None, mask_png: str | None, correct_t: float,
        model_name: str, preset: str, height: float, width: float, device_name: str,
        progress: gr.Progress = gr.Progress()) -> Updates:
    """Propagate the first mask through the video: the overlay, the downloads, a status line, and
    step 4 (corrections) shown, at the frame its slider picks. The last run's session, and its
    features, serve again when the video and the settings are the same; otherwise a new one
    replaces it (once this run has succeeded)."""
    if not video:
        raise InvalidInputError("video: open a video first (upload one, or use the demo clip)")
    if not mask_png:
        raise InvalidInputError("first mask: paint the objects on frame 0 or upload a mask PNG first")
    key = _run_key(video, model_name, preset, height, width, device_name)
    current = session_run
    if current is None or not current.matches(key):
        progress(0, desc="loading the model")
        backbone = page.models.get(model_name, key[4])
        current = SessionRun(video, page.new_folder("run"), model=backbone, preset=key[2], size=key[3],
                             device=key[4], key=key)
    try:
        result = current.run(mask_png, progress=lambda done, total: progress((done, total), desc="propagating"))
    except BaseException:
        if current is not session_run:
            current.close()
        raise
    if current is not session_run:
        _close_run(session_run)
    t = min(int(correct_t), len(current) - 1)
    status = " ".join([f"Propagated {result.n_objects} object(s) through {result.n_frames} frames.", *result.warnings])
    return {page.session_run: current, **_files(page, result), **correction_frame(page, current, t),
            page.status: status, page.correction: gr.update(visible=True),
            page.correct_t: gr.update(maximum=len(current) - 1, value=t)}


@_shown
def correction_frame(page: Page, session_run: SessionRun | None, t: float) -> Updates:
    """Frame t in the correction editor, with its current masks drawn and nothing painted."""
    if session_run is None or session_run.closed:
        return {page.correction_editor: None, page.correction_t: None}
    t = min(int(t), len(session_run) - 1)
    value = {"background": session_run.view(t), "layers": [], "composite": None}
    return {page.correction_editor: gr.update(value=value, label=_correction_label(t)), page.correction_t: t}


@_shown
def correct(page: Page, session_run: SessionRun | None, t: int | None, editor: dict | None, video: str | None,
            model_name: str, preset: str, height: float, width: float, device_name: str,
            progress: gr.Progress = gr.Progress()) -> Updates:
    """Give the painted objects of frame t (the frame the editor shows) and propagate again from
    there, with the features the last run computed: the overlay, the downloads, the status line
    and the editor (frame t's new masks) follow."""
    if session_run is None or session_run.closed or session_run.masks is None or t is None:
        raise InvalidInputError("correction: click Propagate first; a correction updates the frames of a run")
    if not video or not session_run.matches(_run_key(video, model_name, preset, height, width, device_name)):
        raise InvalidInputError("correction: the video or a setting (model, preset, size, device) changed since the "
                                "last Propagate; click Propagate to run with them, then correct")
    t = int(t)
    ids = ids_from_layers((editor or {}).get("layers") or [], tuple(session_run.frames.size))
    kept = sorted(set(np.unique(session_run.masks[t]).tolist()) - set(np.unique(ids).tolist()) - {0})
    result = session_run.correct(t, ids, progress=lambda done, total: progress((done, total), desc="propagating"))
    status = (f"Corrected frame {t}: frames {result.updated[0]}-{result.updated[-1]} propagated again with the "
              f"features already computed ({result.n_objects} object(s)).")
    if kept:
        status += f" Not painted, so kept at frame {t}: object(s) {', '.join(map(str, kept))}."
    status = " ".join([status, *result.warnings])
    return {**_files(page, result), **correction_frame(page, session_run, t), page.status: status}


@_shown
def show_features(page: Page, video: str | None, pictures: FeaturePictures | None, key: tuple | None, t: float,
                  point: tuple[float, float] | None, model_name: str, preset: str, height: float, width: float,
                  device_name: str, progress: gr.Progress = gr.Progress()) -> Updates:
    """Frame t's pictures: frame 0 with the point, the point's correspondence in frame t, the PCA.

    The `FeaturePictures` is made again only when the video or a setting changed.
    """
    if not video:
        raise InvalidInputError("video: open a video first (upload one, or use the demo clip)")
    settings = (video, model_name, preset, parse_size(height, width), _device(device_name))
    if pictures is None or key != settings:
        progress(0, desc="loading the model")
        backbone = page.models.get(model_name, _device(device_name))
        pictures = FeaturePictures(video, model=backbone, preset=_preset(preset), size=settings[3],
                                   device=settings[4])
    t = min(int(t), len(pictures) - 1)
    if point is None:  # until a point is clicked: the centre of the frame
        height_px, width_px = pictures.frames.size
        point = (width_px / 2, height_px / 2)
    progress(0, desc="computing features")
    return {page.pictures: pictures, page.pictures_key: settings, page.point: point,
            page.query: pictures.query_picture(point), page.heat: pictures.correspondence_picture(t, point),
            page.pca: pictures.pca_picture(t)}


def pick(evt: gr.SelectData) -> tuple[float, float]:
    """The (x, y) pixel clicked in frame 0 (the one output, `Page.point`: Gradio passes the click only
    to a plain function, so this handler takes no page)."""
    return float(evt.index[0]), float(evt.index[1])


def empty_upload() -> None:
    """An upload box emptied (its one output): a rejected file does not stay in it."""
    return None


# -------------------------------------------------------------------------------------- wiring

def _bound(handler: Callable, page: Page) -> Callable:
    """`handler` with `page` as its first argument, under the handler's name (Gradio names its API
    endpoint after it)."""
    bound = functools.partial(handler, page)
    bound.__name__ = handler.__name__  # type: ignore[attr-defined]
    return bound


def _outputs(handler: Callable, page: Page, *args: Any) -> list[gr.components.Component]:
    """The components `handler` may change: the keys of the mapping it returns."""
    return list(handler(page, *args))


def _wire(page: Page) -> None:
    """Which event runs which handler (inside the page's `gr.Blocks` context)."""
    opened = _outputs(no_video, page)
    reset = _outputs(clear_all, page)
    mask_views = dict(fn=_bound(first_mask, page), inputs=[page.frame0, page.mask_file, page.editor],
                      outputs=_outputs(clear_first_mask, page))
    clearing = dict(fn=_bound(clear_all, page), inputs=[page.session_run], outputs=reset)

    opening = page.video_file.upload(**clearing).then(_bound(open_video, page), page.video_file, opened)
    opening.then(**mask_views)
    opening.failure(empty_upload, None, page.video_file)  # a rejected file leaves the upload box empty
    page.video_file.clear(**clearing).then(**mask_views)
    page.demo.click(**clearing).then(_bound(use_demo, page), None, [*opened, page.mask_file]).then(**mask_views)
    reading = page.mask_file.upload(_bound(clear_first_mask, page), None, mask_views["outputs"]).then(**mask_views)
    reading.failure(empty_upload, None, page.mask_file)
    page.mask_file.clear(**mask_views)
    page.editor.change(**mask_views)
    _wire_runs(page)

    features = dict(fn=_bound(show_features, page),
                    inputs=[page.video, page.pictures, page.pictures_key, page.frame_slider, page.point,
                            *page.settings],
                    outputs=[page.pictures, page.pictures_key, page.point, page.query, page.heat, page.pca],
                    concurrency_id="features")  # one FeaturePictures per session: no parallel use
    page.show.click(**features)
    page.frame_slider.release(**features, trigger_mode="always_last")  # the frame last picked, always
    page.query.select(pick, None, page.point).then(**features)


def _wire_runs(page: Page) -> None:
    """Propagate, and the corrections after it (one at a time per server: they share the session's state)."""
    files = [page.result_video, page.downloads, page.status, page.correction_editor, page.correction_t]
    shared = dict(concurrency_id="session", show_progress_on=page.result_video)  # the progress over the overlay
    page.run_button.click(_bound(run, page), [page.session_run, page.video, page.first_png, page.correct_t,
                                              *page.settings],
                          [page.session_run, *files, page.correction, page.correct_t], **shared)
    page.correct_t.release(_bound(correction_frame, page), [page.session_run, page.correct_t],
                           [page.correction_editor, page.correction_t], trigger_mode="always_last")
    page.correct_button.click(_bound(correct, page), [page.session_run, page.correction_t, page.correction_editor,
                                                      page.video, *page.settings], files, **shared)


def build_app(model: str | None = None, device: str | None = None) -> gr.Blocks:
    """The page, ready to `.launch()` (as `tcore app` does, or as a Hugging Face Space's `app.py`).

    Args:
        model: the model selected when the page opens: any `--model` value (default: the T-CoRe
            ViT-S/16, Kinetics-400), or "random:tcore_vits16" for random weights.
        device: the device selected when the page opens (None: the best available).
    """
    with gr.Blocks(title="tcore · T-CoRe label propagation", analytics_enabled=False) as blocks:
        _wire(_layout(model, device))
    return blocks
