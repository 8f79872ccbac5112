"""The page of `tcore app`: a Gradio Blocks app over `tcore.app.jobs` and `tcore.pictures`.

Two tabs share one video and one model choice: "Propagate masks" (first mask painted or
uploaded -> overlay video, zip of masks) and "Features" (PCA picture of frame t; click a point of
frame 0 to see its affinity in frame t). Errors of tcore's API reach the page as their own message
and leave the page usable.
"""
from __future__ import annotations

import functools
import tempfile
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
from .jobs import OBJECT_COLOURS, RANDOM_PREFIX, ModelCache, ids_from_layers, parse_size, propagate_to_files, \
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
([CVPR 2025](https://arxiv.org/abs/2503.15096)). The **Features** tab shows what the model sees.
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


def build_app(model: str | None = None, device: str | None = None) -> gr.Blocks:
    """The page, ready to `.launch()` (as `tcore app` does, or as a Hugging Face Space's `app.py`).

    Args:
        model: the model selected when the page opens: any `--model` value (default: the T-CoRe
            ViT-S/16, Kinetics-400), or "random:tcore_vits16" for random weights.
        device: the device selected when the page opens (None: the best available).
    """
    models = ModelCache()
    workdir = tempfile.TemporaryDirectory(prefix="tcore-app-")  # removed with the page (the handlers hold it)
    model_choices = list(MODEL_CHOICES)
    if model and model not in [value for _, value in model_choices]:
        model_choices.insert(0, (model, model))
    devices = _device_choices()

    def new_folder(kind: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir.name))

    # ------------------------------------------------------------------ handlers (no page code)

    @_shown
    def open_video(path: str | None) -> tuple:
        if not path:
            return None, None, None, "", gr.update(maximum=1, value=0), None, None, None, None
        frames = read_video(path)
        first = frames[0]
        editor = {"background": first, "layers": [], "composite": None}
        slider = gr.update(maximum=max(1, len(frames) - 1), value=0)
        return path, first, editor, _video_summary(frames), slider, first, None, None, None

    @functools.cache
    def demo_clip() -> tuple[str, str]:
        folder, mask = write_demo_clip(new_folder("demo"))  # made once, on first use
        return str(folder), str(mask)

    def use_demo() -> tuple:
        folder, mask = demo_clip()
        return (*open_video(folder), mask)

    @_shown
    def first_mask(frame: np.ndarray | None, mask_file: str | None, editor: dict | None) -> tuple:
        """The first mask Run will use: the uploaded file, else the painting. (preview, PNG file)"""
        if frame is None:
            return None, None
        if mask_file:
            ids, palette = read_mask(mask_file)
            if ids.shape != frame.shape[:2]:  # shown on black; Propagate gives the API's size error
                return overlay(np.zeros((*ids.shape, 3), np.uint8), ids, palette), mask_file
            return overlay(frame, ids, palette), mask_file
        ids = ids_from_layers((editor or {}).get("layers") or [], frame.shape[:2])
        if not ids.any():
            return frame, None
        return overlay(frame, ids), str(write_mask(new_folder("painted") / "first_mask.png", ids))

    @_shown
    def run(video: str | None, mask_png: str | None, model_name: str, preset: str, height: float,
            width: float, device_name: str, progress: gr.Progress = gr.Progress()) -> tuple:
        if not video:
            raise InvalidInputError("video: open a video first (upload one, or use the demo clip)")
        if not mask_png:
            raise InvalidInputError("first mask: paint the objects on frame 0 or upload a mask PNG first")
        size = parse_size(height, width)
        progress(0, desc="loading the model")
        backbone = models.get(model_name, _device(device_name))
        result = propagate_to_files(
            video, mask_png, new_folder("run"), model=backbone, preset=_preset(preset), size=size,
            device=_device(device_name), progress=lambda done, total: progress((done, total), desc="propagating"))
        status = f"Propagated {result.n_objects} object(s) through {result.n_frames} frames."
        return str(result.overlay), [str(result.masks_zip), str(result.overlay)], status

    @_shown
    def features(video: str | None, pictures: FeaturePictures | None, key: tuple | None, t: float,
                 point: tuple[float, float] | None, model_name: str, preset: str, height: float, width: float,
                 device_name: str, progress: gr.Progress = gr.Progress()) -> tuple:
        if not video:
            raise InvalidInputError("video: open a video first (upload one, or use the demo clip)")
        settings = (video, model_name, preset, parse_size(height, width), _device(device_name))
        if pictures is None or key != settings:
            progress(0, desc="loading the model")
            backbone = models.get(model_name, _device(device_name))
            pictures = FeaturePictures(video, model=backbone, preset=_preset(preset), size=settings[3],
                                       device=settings[4])
        t = min(int(t), len(pictures) - 1)
        if point is None:  # until a point is clicked: the centre of the frame
            height_px, width_px = pictures.frames.size
            point = (width_px / 2, height_px / 2)
        progress(0, desc="computing features")
        return (pictures, settings, point, pictures.query_picture(point),
                pictures.correspondence_picture(t, point), pictures.pca_picture(t))

    def pick(evt: gr.SelectData) -> tuple[float, float]:
        return float(evt.index[0]), float(evt.index[1])

    # -------------------------------------------------------------------------------- the page

    with gr.Blocks(title="tcore · T-CoRe label propagation", analytics_enabled=False) as page:
        video = gr.State(None)
        frame0 = gr.State(None)
        pictures = gr.State(None)
        pictures_key = gr.State(None)
        point = gr.State(None)
        gr.Markdown(_INTRO)
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
                    device_box = gr.Dropdown(devices, value=device or "auto", label="Device", elem_id="device",
                                             info="auto: CUDA, then MPS, then CPU")
        settings = [model_box, preset_box, height_box, width_box, device_box]

        with gr.Tabs():
            with gr.Tab("Propagate masks", id="propagate"):
                with gr.Row(equal_height=False):
                    with gr.Column():
                        editor = gr.ImageEditor(
                            label="2 · First mask: paint it", type="numpy",
                            image_mode="RGBA", format="png", sources=[], transforms=[], layers=False, height=380,
                            buttons=[], elem_id="mask-editor",
                            brush=gr.Brush(colors=[f"rgb{c}" for c in OBJECT_COLOURS], color_mode="fixed",
                                           default_size=12),
                            eraser=gr.Eraser(default_size=16))
                        mask_file = gr.File(label="... or upload it (palette PNG, grey ids, colours)",
                                            file_count="single", type="filepath", height=110, elem_id="mask-upload")
                    with gr.Column():
                        preview = gr.Image(label="The first mask Propagate uses", interactive=False, height=380,
                                           format="png", buttons=[], elem_id="first-mask")
                        first_png = gr.File(label="First mask (PNG)", interactive=False, height=110,
                                            elem_id="first-mask-file")
                    with gr.Column():
                        run_button = gr.Button("3 · Propagate", variant="primary", elem_id="run-button")
                        result_video = gr.Video(label="Overlay", autoplay=True, loop=True, interactive=False,
                                                height=320, elem_id="overlay")
                        downloads = gr.File(label="Downloads: masks (zip of indexed PNGs), overlay",
                                            file_count="multiple", interactive=False, height=150,
                                            elem_id="downloads")
                        status = gr.Markdown("", elem_id="status")
            with gr.Tab("Features", id="features"):
                gr.Markdown("**Correspondence**: click a point of frame 0 to see its cosine affinity to every patch "
                            "of frame t, the score the propagation ranks (dark: 0 or less, bright: 1). **PCA**: the "
                            "first three principal components of frame t's patch features as RGB, fitted once on "
                            "frames spread over the video, so colours are stable over time.")
                with gr.Row():
                    frame_slider = gr.Slider(0, 1, value=0, step=1, label="Frame t", scale=4, elem_id="frame-t")
                    show = gr.Button("Show features", variant="primary", scale=1, elem_id="features-button")
                with gr.Row():
                    query = gr.Image(label="Frame 0: click a point", interactive=False, format="png", buttons=[],
                                     elem_id="query-frame")
                    heat = gr.Image(label="Its affinity in frame t", interactive=False, format="png", buttons=[],
                                    elem_id="heat")
                    pca = gr.Image(label="PCA of frame t's features", interactive=False, format="png", buttons=[],
                                   elem_id="pca")
        # ------------------------------------------------------------------------------ wiring
        opened = [video, frame0, editor, video_info, frame_slider, query, heat, pca, pictures]
        reset = [*opened, point, result_video, downloads, status]
        cleared = (None, None, None, "", gr.update(maximum=1, value=0), None, None, None, None, None, None, None, "")
        mask_views = dict(fn=first_mask, inputs=[frame0, mask_file, editor], outputs=[preview, first_png])
        opening = video_file.upload(lambda: cleared, None, reset).then(open_video, video_file, opened)
        opening.then(**mask_views)
        opening.failure(lambda: None, None, video_file)  # a rejected file leaves the upload box empty
        video_file.clear(lambda: cleared, None, reset).then(**mask_views)
        demo.click(lambda: cleared, None, reset).then(use_demo, None, [*opened, mask_file]).then(**mask_views)
        reading = mask_file.upload(lambda: (None, None), None, [preview, first_png]).then(**mask_views)
        reading.failure(lambda: None, None, mask_file)
        mask_file.clear(**mask_views)
        editor.change(**mask_views)
        run_button.click(run, [video, first_png, *settings], [result_video, downloads, status])
        feature_inputs = [video, pictures, pictures_key, frame_slider, point, *settings]
        feature_outputs = [pictures, pictures_key, point, query, heat, pca]
        one_at_a_time = dict(concurrency_id="features")  # one FeaturePictures per session: no parallel use
        show.click(features, feature_inputs, feature_outputs, **one_at_a_time)
        frame_slider.release(features, feature_inputs, feature_outputs, **one_at_a_time)
        query.select(pick, None, point).then(features, feature_inputs, feature_outputs, **one_at_a_time)
    return page
