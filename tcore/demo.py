"""`tcore demo`: the main job on a built-in clip with ground truth, or on the user's own video.

The built-in clip is generated here (no data files): two textured objects move across a textured
background, one of them passes behind a textured occluder, and the ground-truth masks of every
frame are known. Copying the first mask to every frame scores a J&F below 50 % on it, so a good
score shows that propagation really follows the objects. `tcore demo` prints J&F, J and F in percent
with one decimal, as the paper and `tcore eval` do (`DemoResult.scores` keeps `davis_scores`'s fractions).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .files import writing

__all__ = ["make_demo_clip", "run_demo", "DemoResult"]


def _texture(rng: np.random.Generator, size: tuple[int, int], scale: float, colours: np.ndarray) -> np.ndarray:
    """A smooth random colour texture: (H, W, 3) float in [0, 1]."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    field = np.zeros((3, h, w))
    for _ in range(6):
        fy, fx = rng.uniform(0.5, 3.0, 2) / scale
        phase = rng.uniform(0, 2 * np.pi, 3)
        field += np.sin(2 * np.pi * (fy * y + fx * x)[None] + phase[:, None, None])
    field += 0.6 * rng.standard_normal((3, h, w))  # grain
    mix = (np.tanh(field) + 1) / 2  # (3, H, W) in [0, 1]
    out = colours[0] * (1 - mix[0, ..., None]) + colours[1] * mix[0, ..., None]
    out = out * (0.75 + 0.25 * mix[1, ..., None]) + 0.1 * (mix[2, ..., None] - 0.5)
    return np.clip(out, 0, 1)


def _blob(size: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], angle: float,
          wobble: np.ndarray) -> np.ndarray:
    """(H, W) bool: an ellipse with a wavy outline."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = y - centre[0], x - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / radii[1], (-s * dx + c * dy) / radii[0]
    theta = np.arctan2(v, u)
    edge = 1 + sum(a * np.sin((k + 2) * theta + p) for k, (a, p) in enumerate(wobble))
    return u * u + v * v <= edge * edge


def make_demo_clip(n_frames: int = 24, size: tuple[int, int] = (480, 640), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The built-in clip and its ground truth.

    Args:
        n_frames: T, at least 2.
        size: (H, W) in pixels.
        seed: random seed (the clip is a pure function of the arguments).

    Returns:
        frames: (T, H, W, 3) uint8 RGB; masks: (T, H, W) uint8 ids (0 background, 1 and 2 objects).
    """
    if n_frames < 2:
        raise InvalidInputError(f"n_frames={n_frames}: the demo needs at least 2 frames")
    rng = np.random.default_rng(seed)
    h, w = size
    background = _texture(rng, (h, w + w // 2), 90.0, np.array([[0.35, 0.45, 0.30], [0.75, 0.70, 0.55]]))
    skins = [_texture(rng, (h, w), 18.0, np.array([[0.85, 0.20, 0.15], [0.95, 0.75, 0.20]])),
             _texture(rng, (h, w), 12.0, np.array([[0.10, 0.25, 0.80], [0.60, 0.85, 0.95]]))]
    occluder_skin = _texture(rng, (h, w), 30.0, np.array([[0.30, 0.22, 0.15], [0.55, 0.42, 0.30]]))
    wobbles = [rng.uniform(0, 0.12, (3, 2)), rng.uniform(0, 0.12, (3, 2))]
    frames = np.zeros((n_frames, h, w, 3), dtype=np.uint8)
    masks = np.zeros((n_frames, h, w), dtype=np.uint8)
    occluder = np.zeros((h, w), dtype=bool)
    occluder[:, int(0.52 * w):int(0.62 * w)] = True  # a vertical post
    for t in range(n_frames):
        a = t / (n_frames - 1)
        pan = int(round(a * w / 2))  # the camera pans: the background slides too
        image = background[:, pan:pan + w].copy()
        ids = np.zeros((h, w), dtype=np.uint8)
        paths = [((0.35 + 0.25 * np.sin(np.pi * a)) * h, (0.18 + 0.62 * a) * w),  # left -> right, behind the post
                 ((0.70 - 0.35 * a) * h, (0.80 - 0.45 * a) * w)]  # bottom right -> top centre, in front
        for obj, ((cy, cx), skin, wob) in enumerate(zip(paths, skins, wobbles), start=1):
            radii = (0.17 * h * (1 + 0.15 * np.sin(3 * a + obj)), 0.12 * w)
            shape = _blob((h, w), (cy, cx), radii, angle=0.8 * a * obj, wobble=wob)
            if obj == 1:
                shape &= ~occluder
            shift = int(round(cx - 0.5 * w))  # the object's texture moves with it
            image[shape] = np.roll(skin, shift, axis=1)[shape]
            ids[shape] = obj
        image[occluder & (ids != 2)] = occluder_skin[occluder & (ids != 2)]
        frames[t] = np.clip(image * 255, 0, 255).astype(np.uint8)
        masks[t] = ids
    return frames, masks


@dataclass(frozen=True)
class DemoResult:
    """What `run_demo` produced."""

    masks: np.ndarray  # (T, H, W) uint8 ids
    scores: dict[str, Any] | None  # davis_scores against the ground truth (built-in clip only)
    copy_scores: dict[str, Any] | None  # the same for copying the first mask to every frame
    overlay: Path | None
    mask_dir: Path | None


def run_demo(model: Any = None, video: Any = None, mask: Any = None, out_dir: str | Path | None = "tcore-demo",
             device: Any = None, progress: bool = True, threshold: float | None = None) -> DemoResult:
    """Propagate the first mask of the built-in clip (or of `video`/`mask`) and score it.

    Args:
        model: as `propagate_masks` (None: T-CoRe ViT-S/16, Kinetics-400).
        video, mask: the user's own video and first mask; both or neither.
        out_dir: where to write the masks (indexed PNGs) and `overlay.gif`; None writes nothing.
        device, progress, threshold: as `propagate_masks`.
    """
    from . import metrics
    from .io import write_masks, write_overlay
    from .models import load_backbone
    from .propagation import iter_masks

    if (video is None) != (mask is None):
        raise InvalidInputError("video and mask (command line: --video and --mask): give both (your own data) or "
                                "neither (the built-in clip)")
    model = load_backbone(model)  # before the clip is made: weights that cannot be had are said at once
    gt = None
    if video is None:
        video, gt = make_demo_clip()
        mask = gt[0]
    stream = iter_masks(video, mask, model=model, device=device, progress=progress, threshold=threshold)
    masks = np.stack([m for _, m in stream])  # (T, H, W) uint8
    scores = copy_scores = None
    if gt is not None:
        scores = metrics.davis_scores(gt, masks)
        copy_scores = metrics.davis_scores(gt, np.repeat(gt[:1], len(gt), axis=0))
    overlay_path = mask_dir = None
    if out_dir is not None:
        out = Path(out_dir)
        with writing(out):
            out.mkdir(parents=True, exist_ok=True)
        palette = stream.palette
        from .io import read_video

        frames = read_video(video)
        mask_dir = out / "masks"
        write_masks(mask_dir, masks, palette=palette, names=frames.names)
        overlay_path = write_overlay(out / "overlay.gif", frames, masks, palette=palette, fps=frames.fps or 8)
    return DemoResult(masks, scores, copy_scores, overlay_path, mask_dir)
