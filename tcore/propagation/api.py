"""Front ends on the one propagation engine: masks, keypoints and part labels in, the same out.

Every front end runs the same core (`_propagate_soft`): frames are decoded lazily, encoded once
each in batches, and fed to a streaming `Propagator`; front ends only convert labels in and out.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Union

import numpy as np
import torch

from .engine import Propagator
from .features import FrameEncoder, pick_device
from .labels import decode_ids_on_device, decode_keypoints, finish_ids, keypoint_heatmaps, soft_onehot_at_grid
from .presets import Preset, get_preset, working_size

__all__ = ["propagate_masks", "propagate_keypoints", "propagate_parts"]

# Threads decoding image files ahead of the backbone: one per four cores, at most four (measured on a
# 16-core GPU host in benchmarks/propagation.py, pipeline part; one thread is all a 2-core machine can spare).
_DECODE_WORKERS = max(1, min(4, (os.cpu_count() or 1) // 4))

VideoSource = Union[str, os.PathLike, np.ndarray, torch.Tensor, list]
MaskSource = Union[str, os.PathLike, np.ndarray, torch.Tensor, Any]


def _progress_bar(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="frame", dynamic_ncols=True, leave=False)


def _setup(video: VideoSource, model: Any, preset: str | Preset | None, size: tuple[int, int] | None,
           device: str | torch.device | None):
    """Frames, backbone, preset and working size shared by all front ends."""
    from ..io import read_video
    from ..models import create_backbone

    frames = read_video(video)
    if len(frames) < 2:
        raise ValueError(f"video: propagation needs at least 2 frames, got {len(frames)}")
    device = pick_device(device)
    backbone = create_backbone(model, device=device)
    spec = get_preset(preset)
    work = working_size(tuple(frames.size), spec, backbone.patch_size, size)
    return frames, backbone, spec, work, device


def _engine(spec: Preset, topk: int | None, temperature: float | None, radius: float | None,
            n_context: int | None) -> Propagator:
    return Propagator(topk=spec.topk if topk is None else topk,
                      temperature=spec.temperature if temperature is None else temperature,
                      radius=spec.radius if radius is None else radius,
                      n_context=spec.n_context if n_context is None else n_context,
                      check_norms=False)  # FrameEncoder's features are L2-normalised


def _propagate_soft(frames, encoder: FrameEncoder, engine: Propagator, first_labels: torch.Tensor,
                    progress: bool, desc: str) -> Iterator[tuple[int, torch.Tensor]]:
    """(t0, soft labels (k, C, h, w) on the device of frames t0..t0+k-1), a chunk per backbone call."""
    bar = _progress_bar(len(frames), progress, desc)
    t = 0
    try:
        for feats in encoder.stream(frames.iter_threaded(_DECODE_WORKERS)):  # (k, h, w, D)
            if t == 0:
                out = engine.reset(feats[0], first_labels.to(feats.device))[None]
                if len(feats) > 1:
                    out = torch.cat([out, engine.step(feats[1:])])
            else:
                out = engine.step(feats)
            yield t, out
            t += len(out)
            bar.update(len(out))
    finally:
        bar.close()


def _host_one_chunk_behind(chunks: Iterator[tuple[int, tuple[torch.Tensor, ...]]]
                           ) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
    """(t0, device tensors) chunks -> (t0, the same tensors on the host), one chunk late.

    On CUDA each chunk is copied to pinned host memory without waiting, and handed out only once
    the next chunk's work (decoding, backbone, engine) has been queued: the GPU never idles while
    the host writes results, and the host waits only for work already done. Elsewhere the tensors
    are moved with `.cpu()` and handed out at once.
    """
    def unpinned(chunk: tuple[int, tuple[torch.Tensor, ...], torch.cuda.Event]) -> tuple[int, tuple[torch.Tensor, ...]]:
        t0, pinned, done = chunk
        done.synchronize()  # the copy has landed; pageable copies free the pinned buffers for reuse
        return t0, tuple(torch.empty(x.shape, dtype=x.dtype).copy_(x) for x in pinned)

    pending = None
    for t0, tensors in chunks:
        if not tensors[0].is_cuda:
            yield t0, tuple(x.cpu() for x in tensors)
            continue
        pinned = tuple(torch.empty(x.shape, dtype=x.dtype, pin_memory=True).copy_(x, non_blocking=True)
                       for x in tensors)
        done = torch.cuda.Event()
        done.record()
        if pending is not None:
            yield unpinned(pending)
        pending = (t0, pinned, done)
    if pending is not None:
        yield unpinned(pending)


def _first_ids(first_mask: MaskSource, threshold: float | None, frame_size: tuple[int, int]) -> np.ndarray:
    from ..io import read_mask

    ids, _ = read_mask(first_mask, threshold=threshold)
    if tuple(ids.shape) != tuple(frame_size):
        raise ValueError(f"first_mask: size {ids.shape[1]}x{ids.shape[0]} (WxH) differs from the video frames' "
                         f"{frame_size[1]}x{frame_size[0]}; resize the mask with nearest-neighbour "
                         "interpolation (e.g. PIL Image.NEAREST) to the frame size")
    return ids


def _classes(ids: np.ndarray, what: str) -> np.ndarray:
    classes = np.unique(ids)
    if classes.max(initial=0) == 0:
        raise ValueError(f"{what}: no object in the first mask (every pixel is background 0); "
                         "give at least one non-zero id (for a soft grey mask use threshold=)")
    return np.union1d(classes, [0]).astype(np.uint8)  # background is always channel 0


def propagate_masks(
    video: VideoSource,
    first_mask: MaskSource,
    *,
    model: Any = None,
    preset: str | Preset | None = None,
    size: tuple[int, int] | None = None,
    threshold: float | None = None,
    device: str | torch.device | None = None,
    stream: bool = False,
    return_probs: bool = False,
    batch_size: int = 8,
    precision: str = "fp32",
    progress: bool = True,
    topk: int | None = None,
    temperature: float | None = None,
    radius: float | None = None,
    n_context: int | None = None,
):
    """Propagate the first frame's object masks through a video (semi-supervised VOS).

    Args:
        video: a frame folder, a video file (needs the `video` extra), a list of PIL images, a
            uint8 array (T, H, W, 3), or a tensor (T, 3, H, W) (uint8, or float in [0, 1]).
        first_mask: a path, PIL image or (H, W) integer array: palette PNG ids (255 = void ->
            background), grey ids ({0, 255} is one object), or RGB colours (one object each). A
            soft grey mask is an error: pass `threshold=` to binarise it.
        model: None (T-CoRe ViT-S/16 Kinetics-400), a name, a checkpoint path, or a module (a
            tcore backbone or a timm ViT).
        preset: None (paper hyper-parameters, short side 480, aspect kept), "davis" (480x880
            stretched: the paper's DAVIS protocol exactly), "jhmdb" or "vip".
        size: (H, W) working size overriding the preset (floored to the patch size).
        threshold: binarise a grey first mask at this value (>= is object 1).
        device: None picks CUDA, then MPS, then CPU.
        stream: return a generator of `(t, mask)` instead of an array.
        return_probs: also return the soft labels (C, h, w) per frame at the feature grid, channel
            c = the c-th smallest id of the first mask (0 = background).
        batch_size: frames per backbone call.
        precision: "fp32" (exact) or "bf16" (opt-in autocast for the backbone).
        progress: show a progress bar on stderr.
        topk, temperature, radius, n_context: override the preset's propagation settings (radius
            in feature-grid cells).

    Returns:
        (T, H, W) uint8 object ids (with the first mask's ids, not renumbered); with
        `return_probs`, `(masks, probs)` where probs is a (T, C, h, w) float32 tensor. With
        `stream=True`, a generator of `(t, mask)` or `(t, mask, probs)`.
    """
    frames, backbone, spec, work, device = _setup(video, model, preset, size, device)
    ids = _first_ids(first_mask, threshold, tuple(frames.size))
    classes = _classes(ids, "first_mask")
    first = soft_onehot_at_grid(ids, classes, work, backbone.patch_size)
    encoder = FrameEncoder(backbone, work, device, batch_size, precision)
    engine = _engine(spec, topk, temperature, radius, n_context)
    out_size = tuple(frames.size)

    def on_device():
        for t0, labels in _propagate_soft(frames, encoder, engine, first, progress, "propagating masks"):
            ids = decode_ids_on_device(labels, classes, work, out_size, spec.output_resize)
            yield t0, (ids, labels) if return_probs else (ids,)

    def generate():
        for t0, host in _host_one_chunk_behind(on_device()):
            for i, ids in enumerate(host[0].numpy()):
                mask = finish_ids(ids, out_size, spec.output_resize)
                yield (t0 + i, mask, host[1][i]) if return_probs else (t0 + i, mask)

    if stream:
        return generate()
    results = list(generate())
    masks = np.stack([r[1] for r in results])
    if return_probs:
        return masks, torch.stack([r[2] for r in results])
    return masks


def propagate_parts(video: VideoSource, first_labels: MaskSource, *, preset: str | Preset | None = "vip",
                    **kwargs: Any):
    """Propagate semantic/part labels (grey class ids, e.g. VIP's 20 classes) through a video.

    Same engine and options as `propagate_masks`, with the VIP protocol by default (long side 880,
    short side floored to a multiple of 64, top-10, PIL NEAREST back to the original size).

    Returns:
        (T, H, W) uint8 class ids (or a generator with `stream=True`).
    """
    return propagate_masks(video, first_labels, preset=preset, **kwargs)


def propagate_keypoints(
    video: VideoSource,
    first_keypoints: np.ndarray,
    *,
    model: Any = None,
    preset: str | Preset | None = None,
    size: tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    precision: str = "fp32",
    progress: bool = True,
    topk: int | None = None,
    temperature: float | None = None,
    radius: float | None = None,
    n_context: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Propagate the first frame's keypoints (the paper's JHMDB pose protocol with preset="jhmdb").

    Each keypoint becomes the reference's Gaussian heatmap (sigma 0.5 feature-grid cells, its window
    rules) plus a background channel; heatmaps are propagated like masks and decoded with a top-5
    soft-argmax.

    Args:
        video: as in `propagate_masks`.
        first_keypoints: (K, 2) float (x, y) pixel positions in frame 0 (0-based); NaN for a joint
            that is not in the first frame.
        preset: None (short side 480, aspect kept) or "jhmdb" (320x320 stretched, the paper's).
        Other arguments as in `propagate_masks`.

    Returns:
        keypoints: (T, K, 2) float32 (x, y) pixels in the original frames, -1 where lost;
        visible: (T, K) bool, False where the propagated heatmap vanished.
    """
    points = np.asarray(first_keypoints, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"first_keypoints: expected shape (K, 2) of (x, y) pixels, got {points.shape}")
    frames, backbone, spec, work, device = _setup(video, model, preset, size, device)
    h_img, w_img = frames.size
    p = backbone.patch_size
    grid_points = points * np.array([work[1] / w_img, work[0] / h_img]) / p  # (K, 2) in grid cells
    first = keypoint_heatmaps(grid_points, (work[0] // p, work[1] // p))
    encoder = FrameEncoder(backbone, work, device, batch_size, precision)
    engine = _engine(spec, topk, temperature, radius, n_context)
    chunks = ((t0, decode_keypoints(labels))
              for t0, labels in _propagate_soft(frames, encoder, engine, first, progress, "propagating keypoints"))
    decoded = [host for _, host in _host_one_chunk_behind(chunks)]
    xy = torch.cat([c[0] for c in decoded]).numpy()  # (T, K, 2) in grid cells
    vis = torch.cat([c[1] for c in decoded]).numpy()
    scale = np.array([p * w_img / work[1], p * h_img / work[0]], dtype=np.float32)
    pixels = np.where(vis[..., None], xy * scale, -1.0).astype(np.float32)
    return pixels, vis
