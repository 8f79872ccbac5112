"""Front ends on the one propagation engine: masks, part labels and keypoints in, the same out.

    >>> masks = propagate_masks("frames/", "00000.png")                 # (T, H, W) uint8 ids
    >>> masks = propagate_masks("frames/", {0: "00000.png", 35: m35})   # masks at any frame
    >>> result = propagate_masks(video, first, soft=True)               # + ids, palette, soft labels
    >>> stream = iter_masks("video.mp4", "first.png")                   # memory O(context)
    >>> for t, mask in stream: ...                                      # stream.ids, stream.palette

Every front end runs the same core (`_propagate`): frames are decoded lazily, encoded once each in
batches, and fed to a streaming `Propagator`; front ends only convert labels in and out. The
propagation settings (size rule, top-k, temperature, radius, context) travel in a `Preset`
(`dataclasses.replace(PRESETS["davis"], topk=5)`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, Union, overload

import numpy as np
import torch

from ..errors import InvalidInputError
from ..precision import exact_fp32
from .annotations import Annotations, MasksInput, read_annotations
from .budget import check_working_size
from .engine import Propagator
from .encoder import VideoEncoder
from .labels import decode_ids_on_device, decode_keypoints, finish_ids, keypoint_heatmaps, soft_onehot_at_grid
from .presets import MAX_AUTO_TOKENS, Preset, scaled_size

__all__ = ["MaskStream", "Propagation", "iter_masks", "propagate_keypoints", "propagate_masks", "propagate_parts"]

_logger = logging.getLogger(__name__)

VideoInput = Union[str, os.PathLike, np.ndarray, torch.Tensor, list]
PresetInput = Union[str, Preset, None]
Item = TypeVar("Item", tuple[int, np.ndarray], tuple[int, np.ndarray, np.ndarray])


@dataclass(frozen=True)
class Propagation:
    """Propagated masks with what is needed to read and save them (`propagate_masks(soft=True)`).

    Attributes:
        masks: (T, H, W) uint8 object ids at the frames' size (the given ids, not renumbered).
        ids: (C,) uint8 object id of each soft-label channel, ascending, background 0 first.
        palette: (256, 3) uint8 palette of the given masks (palette PNGs), else None.
        soft: (T, C, h, w) float32 soft labels at the feature grid (h, w = working size / patch),
            summing to 1 over C; frames before the first annotation are all background.
    """

    masks: np.ndarray
    ids: np.ndarray
    palette: np.ndarray | None
    soft: np.ndarray


class MaskStream(Generic[Item]):
    """The frames' masks one at a time (what `iter_masks` returns): iterate it for `(t, mask)`, or
    `(t, mask, soft)` with `soft=True`; memory is O(context), not O(video).

    Attributes:
        ids: (C,) uint8 object id of each soft-label channel, background 0 first.
        palette: (256, 3) uint8 palette of the given masks, else None (e.g. for `tcore.write_masks`).
        names: the frames' names (file stems for a frame folder), for naming outputs.
    """

    def __init__(self, items: Iterator[Item], ids: np.ndarray, palette: np.ndarray | None, names: list[str]) -> None:
        self._items = items
        self.ids = ids
        self.palette = palette
        self.names = names

    def __iter__(self) -> MaskStream[Item]:
        return self

    def __next__(self) -> Item:
        return next(self._items)

    def close(self) -> None:
        """Stop early (the background decoder stops too)."""
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


# ------------------------------------------------------------------------------------ the core

def _progress_bar(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="frame", dynamic_ncols=True, leave=False)


def _engine(preset: Preset) -> Propagator:
    """A streaming engine with the preset's settings."""
    return Propagator(topk=preset.topk, temperature=preset.temperature, radius=preset.radius,
                      n_context=preset.n_context, check_norms=False)  # FrameEncoder's features are L2-normalised


def _open(video: VideoInput, model: Any, preset: PresetInput, size: tuple[int, int] | None,
          device: str | torch.device | None, batch_size: int, precision: str) -> VideoEncoder:
    """`VideoEncoder.open` for propagation (2 frames at least), its working size checked against
    what the propagation needs (`tcore.propagation.budget`) before any frame is decoded."""
    opened = VideoEncoder.open(video, model=model, preset=preset, size=size, device=device, batch_size=batch_size,
                               precision=precision, min_frames=2)
    check_working_size(opened.size, opened.encoder.backbone, topk=opened.preset.topk,
                       n_context=opened.preset.n_context, batch_size=batch_size, device=opened.encoder.device)
    return opened


def _propagate(opened: VideoEncoder, first: torch.Tensor, start: int,
               later: dict[int, tuple[torch.Tensor, np.ndarray]], progress: bool,
               desc: str) -> Iterator[tuple[int, torch.Tensor]]:
    """(t0, soft labels (k, C, h, w) on the device of frames t0..t0+k-1), a chunk per backbone call.

    Args:
        opened: the video, its encoder and preset.
        first: (C, h, w) labels of frame `start`, where propagation begins.
        start: the first annotated frame; earlier frames are all background (channel 0) and are
            not even decoded.
        later: {t: ((C, h, w) annotated labels, channels it gives)} for annotated frames t > start.
        progress: show a progress bar on stderr.
        desc: its title.
    """
    engine = _engine(opened.preset)
    encoder = opened.encoder
    annotated = sorted(later)
    bar = _progress_bar(len(opened), progress, desc)
    try:
        background = torch.zeros((encoder.batch_size, *first.shape), device=encoder.device)
        background[:, 0] = 1
        for t0 in range(0, start, encoder.batch_size):
            yield t0, background[:min(encoder.batch_size, start - t0)]
            bar.update(min(encoder.batch_size, start - t0))
        t0 = start
        for feats in opened.stream(start):  # (k, h, w, D) of frames t0..
            parts, i = [], 0
            if t0 == start:
                parts.append(engine.reset(feats[0], first.to(feats.device))[None])
                i = 1
            while i < len(feats):  # engine steps end at annotated frames
                stop = next((s - t0 + 1 for s in annotated if t0 + i <= s < t0 + len(feats)), len(feats))
                out = engine.step(feats[i:stop])  # (stop - i, C, h, w)
                if t0 + stop - 1 in later:
                    labels, channels = later[t0 + stop - 1]
                    out = torch.cat([out[:-1], engine.annotate(labels.to(out.device), channels)[None]])
                parts.append(out)
                i = stop
            yield t0, parts[0] if len(parts) == 1 else torch.cat(parts)
            t0 += len(feats)
            bar.update(len(feats))
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


def _annotated_labels(annotations: Annotations, opened: VideoEncoder) -> tuple[torch.Tensor, dict]:
    """Frame `start`'s labels and {t: (labels, channels)} of the later annotations, at the grid."""
    def at_grid(ids: np.ndarray) -> torch.Tensor:
        return soft_onehot_at_grid(ids, annotations.classes, opened.size, opened.patch_size)

    start = annotations.start
    later = {t: (at_grid(ids), annotations.channels(t)) for t, ids in annotations.ids.items() if t != start}
    return at_grid(annotations.ids[start]), later


def _lost_objects(annotations: Annotations, labels: dict[int, torch.Tensor]) -> dict[int, int]:
    """{object id: the annotated frame where it wins no cell of the feature grid} (first such frame).

    Such an object wins no cell of the grid's labels (the argmax, ties to the lower channel, as
    the output's), so it has no cell of its own to propagate from, and the output (those labels
    upsampled) shows it, at best, as a sliver between cells: in practice it is missing.

    Args:
        annotations: the masks read.
        labels: {annotated frame t: (C, h, w) labels at the grid}.
    """
    lost: dict[int, int] = {}
    for t, grid_labels in labels.items():
        winners = np.unique(grid_labels.argmax(dim=0).numpy())  # channels that win a cell
        for channel in np.setdiff1d(annotations.channels(t), winners):
            lost.setdefault(int(annotations.classes[channel]), t)
    return lost


def _warn_lost_objects(annotations: Annotations, labels: dict[int, torch.Tensor], opened: VideoEncoder) -> None:
    """Log a warning naming the objects too small for the working grid, with a size that fits them.

    The size suggested makes the smallest extent (height or width of its bounding box) of every
    lost object span a patch and a pixel, so that it fills at least one cell, within the token
    limit of automatic sizes (`MAX_AUTO_TOKENS`); the message says when that limit is too small.
    """
    lost = _lost_objects(annotations, labels)
    if not lost:
        return
    factor = max(max(_scale_to_fill_a_cell(annotations.ids[t] == i, opened) for i, t in lost.items()), 1.5)
    fit = scaled_size(opened.size, factor, opened.patch_size)
    wanted = scaled_size(opened.size, factor, opened.patch_size, max_tokens=2 ** 62)
    grid = opened.grid
    ids, frames = sorted(lost), sorted(set(lost.values()))
    shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
    advice = f"Pass a larger size={fit} (command line: --size {fit[0]} {fit[1]})"
    if wanted != fit:
        advice += (f", the largest within {MAX_AUTO_TOKENS} patch tokens per frame; the smallest of them need about "
                   f"size={wanted}: crop the video around them, or merge them into larger objects")
    _logger.warning("%d of %d objects (ids %s) cover no cell of the %dx%d feature grid of the working size %dx%d "
                    "at annotated frame%s %s: they are missing from the output from there on. %s", len(ids),
                    len(annotations.classes) - 1, shown, grid[0], grid[1], opened.size[0], opened.size[1],
                    "s" if len(frames) > 1 else "", ", ".join(map(str, frames)), advice)


def _scale_to_fill_a_cell(pixels: np.ndarray, opened: VideoEncoder) -> float:
    """The working-size scale at which an object's bounding box spans patch + 1 pixels both ways.

    Args:
        pixels: (H, W) bool, the object's pixels at the original size.
        opened: the video at its working size.
    """
    rows, cols = np.nonzero(pixels)
    height = (rows.max() - rows.min() + 1) * opened.size[0] / pixels.shape[0]  # at the working size
    width = (cols.max() - cols.min() + 1) * opened.size[1] / pixels.shape[1]
    return (opened.patch_size + 1) / min(height, width)


def _mask_items(video: VideoInput, masks: MasksInput, *, model: Any, preset: PresetInput,
                size: tuple[int, int] | None, threshold: float | None, device: str | torch.device | None,
                batch_size: int, precision: str, progress: bool, soft: bool,
                desc: str) -> MaskStream:
    """The shared body of `propagate_masks` and `iter_masks`."""
    from ..io import read_video

    frames = read_video(video)
    annotations = read_annotations(masks, frames.names, tuple(frames.size), threshold)  # before the model loads
    opened = _open(frames, model, preset, size, device, batch_size, precision)
    classes = annotations.classes
    first, later = _annotated_labels(annotations, opened)
    _warn_lost_objects(annotations, {annotations.start: first, **{t: lab for t, (lab, _) in later.items()}}, opened)
    out_size, resize = tuple(frames.size), opened.preset.output_resize

    def on_device() -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
        for t0, labels in _propagate(opened, first, annotations.start, later, progress, desc):
            with exact_fp32(labels.device):
                ids = decode_ids_on_device(labels, classes, opened.size, out_size, resize)  # (k, H, W) uint8
            yield t0, (ids, labels) if soft else (ids,)

    def items() -> Iterator[tuple]:
        for t0, host in _host_one_chunk_behind(on_device()):
            for i, ids in enumerate(host[0].numpy()):
                mask = finish_ids(ids, out_size, resize)
                yield (t0 + i, mask, host[1][i].numpy()) if soft else (t0 + i, mask)

    return MaskStream(items(), classes, annotations.palette, list(frames.names))


# ------------------------------------------------------------------------------- masks, parts

@overload
def iter_masks(video: VideoInput, masks: MasksInput, *, model: Any = ..., preset: PresetInput = ...,
               size: tuple[int, int] | None = ..., threshold: float | None = ...,
               device: str | torch.device | None = ..., batch_size: int = ..., precision: str = ...,
               progress: bool = ..., soft: Literal[False] = ...) -> MaskStream[tuple[int, np.ndarray]]: ...


@overload
def iter_masks(video: VideoInput, masks: MasksInput, *, model: Any = ..., preset: PresetInput = ...,
               size: tuple[int, int] | None = ..., threshold: float | None = ...,
               device: str | torch.device | None = ..., batch_size: int = ..., precision: str = ...,
               progress: bool = ..., soft: Literal[True]) -> MaskStream[tuple[int, np.ndarray, np.ndarray]]: ...


def iter_masks(video: VideoInput, masks: MasksInput, *, model: Any = None, preset: PresetInput = None,
               size: tuple[int, int] | None = None, threshold: float | None = None,
               device: str | torch.device | None = None, batch_size: int = 8, precision: str = "fp32",
               progress: bool = True, soft: bool = False) -> MaskStream:
    """`propagate_masks` one frame at a time: a `MaskStream` of `(t, mask)` (memory O(context)).

    Same arguments as `propagate_masks`. The model is loaded and the masks are read when this is
    called (errors show here); frames are decoded and propagated as the stream is consumed.

    Returns:
        A `MaskStream` (`.ids`, `.palette`, `.names`) yielding `(t, (H, W) uint8 mask)` for
        t = 0..T-1, or `(t, mask, (C, h, w) float32 soft labels)` with `soft=True`.
    """
    return _mask_items(video, masks, model=model, preset=preset, size=size, threshold=threshold, device=device,
                       batch_size=batch_size, precision=precision, progress=progress, soft=soft,
                       desc="propagating masks")


@overload
def propagate_masks(video: VideoInput, masks: MasksInput, *, model: Any = ..., preset: PresetInput = ...,
                    size: tuple[int, int] | None = ..., threshold: float | None = ...,
                    device: str | torch.device | None = ..., batch_size: int = ..., precision: str = ...,
                    progress: bool = ..., soft: Literal[False] = ...) -> np.ndarray: ...


@overload
def propagate_masks(video: VideoInput, masks: MasksInput, *, model: Any = ..., preset: PresetInput = ...,
                    size: tuple[int, int] | None = ..., threshold: float | None = ...,
                    device: str | torch.device | None = ..., batch_size: int = ..., precision: str = ...,
                    progress: bool = ..., soft: Literal[True]) -> Propagation: ...


def propagate_masks(video: VideoInput, masks: MasksInput, *, model: Any = None, preset: PresetInput = None,
                    size: tuple[int, int] | None = None, threshold: float | None = None,
                    device: str | torch.device | None = None, batch_size: int = 8, precision: str = "fp32",
                    progress: bool = True, soft: bool = False) -> np.ndarray | Propagation:
    """Propagate object masks through a video (semi-supervised VOS), given at frame 0 or at any frames.

    With one first-frame mask this is the paper's protocol exactly (with `preset="davis"`). Masks
    given at later frames add objects that enter later, or correct drifting ones: an object is
    absent (probability 0) before the first mask that shows it; at an annotated frame each object
    the mask shows takes exactly its pixels, and every other pixel keeps its propagated labels for
    the other objects (a mask that shows only a new object never erases the others); the frame
    then joins the long-term memory like frame 0 (matched by every later frame, unrestricted by
    the radius, never evicted). Propagation starts at the first annotated frame; earlier frames
    are all background and are not encoded.

    Args:
        video: a frame folder, a video file (needs the `video` extra), a list of PIL images, a
            uint8 array (T, H, W, 3), or a tensor (T, 3, H, W) (uint8, or float in [0, 1]).
        masks: the first frame's mask, a mapping {frame index: mask}, or a folder of PNGs named
            like the frames (e.g. YouTube-VOS's Annotations/<video>/). A mask is a path, PIL image
            or (H, W) integer array: palette PNG ids (255 = void -> background), grey ids
            ({0, 255} is one object), or RGB colours (one object each; ids are per mask). A soft
            grey mask is an error: pass `threshold=` to binarise it.
        model: None (T-CoRe ViT-S/16 Kinetics-400), a name, a checkpoint path, or a module (a
            tcore backbone or a timm ViT).
        preset: None (the paper's hyper-parameters, short side 480, aspect kept), "davis" (480x880
            stretched: the paper's DAVIS protocol exactly), "jhmdb", "vip", or a `Preset` (e.g.
            `dataclasses.replace(tcore.PRESETS["davis"], topk=5)`) for other settings.
        size: (H, W) working size overriding the preset's size rule (floored to the patch size),
            obeyed as given when it can run (see `tcore.propagation.budget`: enough grid cells for the
            top-k, and memory the device has). Without it, a rule that gives more than `MAX_AUTO_TOKENS`
            (16384) patch tokens per frame (an extreme aspect ratio) is an error that names a size that fits. Objects
            that cover no cell of the feature grid where they are annotated are missing from the
            output: a warning (logger `tcore.propagation.api`) names them and a larger size.
        threshold: binarise grey or colour masks at this value (>= is object 1).
        device: None picks CUDA, then MPS, then CPU; a device that is not there is an error that
            lists the available ones.
        batch_size: frames per backbone call.
        precision: "fp32" (exact, whatever autocast or TF32 setting the caller has) or "bf16"
            (opt-in autocast for the backbone; not the paper's numbers).
        progress: show a progress bar on stderr.
        soft: return a `Propagation` with the ids, the palette and the soft labels too.

    Returns:
        (T, H, W) uint8 object ids (the given ids, not renumbered); with `soft=True` a
        `Propagation` (masks, ids, palette, (T, C, h, w) float32 soft labels).

    Raises:
        InvalidInputError: a mask of another size, with no object, at a frame index out of range; a
            soft or anti-aliased mask; a video of fewer than 2 frames; an unreadable frame (named);
            a working size above the token limit, or whose feature grid has fewer cells than
            the top-k; a device that is not available.
        InsufficientMemoryError: a working size whose estimated memory exceeds the device's total
            (named with the estimate and a size that fits), before any frame is decoded.
        (Each is a `tcore.errors.UserError`; see `tcore.read_video` and `tcore.read_mask` for theirs.)
    """
    stream = _mask_items(video, masks, model=model, preset=preset, size=size, threshold=threshold, device=device,
                         batch_size=batch_size, precision=precision, progress=progress, soft=soft,
                         desc="propagating masks")
    items = list(stream)
    stacked = np.stack([item[1] for item in items])  # (T, H, W)
    if not soft:
        return stacked
    return Propagation(stacked, stream.ids, stream.palette, np.stack([item[2] for item in items]))


@overload
def propagate_parts(video: VideoInput, labels: MasksInput, *, model: Any = ..., preset: PresetInput = ...,
                    size: tuple[int, int] | None = ..., device: str | torch.device | None = ...,
                    batch_size: int = ..., precision: str = ..., progress: bool = ...,
                    soft: Literal[False] = ...) -> np.ndarray: ...


@overload
def propagate_parts(video: VideoInput, labels: MasksInput, *, model: Any = ..., preset: PresetInput = ...,
                    size: tuple[int, int] | None = ..., device: str | torch.device | None = ...,
                    batch_size: int = ..., precision: str = ..., progress: bool = ...,
                    soft: Literal[True]) -> Propagation: ...


def propagate_parts(video: VideoInput, labels: MasksInput, *, model: Any = None, preset: PresetInput = "vip",
                    size: tuple[int, int] | None = None, device: str | torch.device | None = None,
                    batch_size: int = 8, precision: str = "fp32", progress: bool = True,
                    soft: bool = False) -> np.ndarray | Propagation:
    """Propagate semantic/part labels (grey class ids, e.g. VIP's 20 classes) through a video.

    `propagate_masks` with the VIP protocol by default (long side 880, short side floored to a
    multiple of 64, top-10, PIL NEAREST back to the original size); `labels` may be given at any
    frames as there. `iter_masks(video, labels, preset="vip")` is its streaming form.

    Returns:
        (T, H, W) uint8 class ids; with `soft=True` a `Propagation`.
    """
    return propagate_masks(video, labels, model=model, preset=preset, size=size, device=device,
                           batch_size=batch_size, precision=precision, progress=progress, soft=soft)


# ------------------------------------------------------------------------------------ keypoints

def propagate_keypoints(video: VideoInput, first_keypoints: np.ndarray, *, model: Any = None,
                        preset: PresetInput = None, size: tuple[int, int] | None = None,
                        device: str | torch.device | None = None, batch_size: int = 8,
                        precision: str = "fp32", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Propagate the first frame's keypoints (the paper's JHMDB pose protocol with preset="jhmdb").

    Each keypoint becomes the reference's Gaussian heatmap (sigma 0.5 feature-grid cells, its window
    rules) plus a background channel; heatmaps are propagated like masks and decoded with a top-5
    soft-argmax.

    Args:
        video: as in `propagate_masks`.
        first_keypoints: (K, 2) float (x, y) pixel positions in frame 0 (0-based); NaN for a joint
            that is not in the first frame.
        preset: None (short side 480, aspect kept), "jhmdb" (320x320 stretched, the paper's) or a
            `Preset`.
        model, size, device, batch_size, precision, progress: as in `propagate_masks`.

    Returns:
        keypoints: (T, K, 2) float32 (x, y) pixels in the original frames, -1 where lost;
        visible: (T, K) bool, False where the propagated heatmap vanished.
    """
    points = np.asarray(first_keypoints, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise InvalidInputError(f"first_keypoints: expected shape (K, 2) of (x, y) pixels, got {points.shape}")
    opened = _open(video, model, preset, size, device, batch_size, precision)
    h_img, w_img = opened.frames.size
    work, p = opened.size, opened.patch_size
    grid_points = points * np.array([work[1] / w_img, work[0] / h_img]) / p  # (K, 2) in grid cells
    first = keypoint_heatmaps(grid_points, (work[0] // p, work[1] // p))
    chunks = ((t0, decode_keypoints(labels))
              for t0, labels in _propagate(opened, first, 0, {}, progress, "propagating keypoints"))
    decoded = [host for _, host in _host_one_chunk_behind(chunks)]
    xy = torch.cat([c[0] for c in decoded]).numpy()  # (T, K, 2) in grid cells
    vis = torch.cat([c[1] for c in decoded]).numpy()
    scale = np.array([p * w_img / work[1], p * h_img / work[0]], dtype=np.float32)
    pixels = np.where(vis[..., None], xy * scale, -1.0).astype(np.float32)
    return pixels, vis
