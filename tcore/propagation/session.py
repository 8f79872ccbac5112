"""Correct and re-propagate in seconds: a propagation session that keeps the features.

    >>> with tcore.PropagationSession("frames/", preset="davis") as session:
    ...     session.add_mask(0, "00000.png")
    ...     for t, mask in session.propagate(): ...       # frames 0..T-1, as iter_masks
    ...     session.add_mask(40, corrected)               # a correction at frame 40
    ...     for t, mask in session.propagate(): ...       # frames 40..T-1, no backbone call
    ...     for t, mask in session.propagate(reverse=True): ...   # towards frame 0

Why: people who segment a video propagate, look, correct a frame and propagate again. The features
of a frame do not depend on the masks, so the session encodes each frame once and keeps its
features (`FeatureCache`: in memory up to `cache_bytes`, spilled to a temporary file beyond), and
keeps the engine's state every `snapshot_every` frames (labels only: the features are the
cache's). A correction at frame k restarts the engine from the last state kept at or before k.

Exactness (the contract, docs/propagation.md "Sessions"): every mask a forward stream yields equals,
pixel for pixel, that frame of one fresh `propagate_masks(video, session.annotations)`, and its
soft labels are those labels; every mask a reverse stream yields equals that frame of the same
call on the time-reversed video and masks. It holds because nothing differs: the same labels at the
grid (`api._annotated_labels`), the same engine fed the same features, and a restored engine that
continues bit for bit (`Propagator.restore`).

Which frames a stream yields. Forward propagation reaches the frames from the first annotated
frame on; backward propagation, once asked for, the frames up to the last one. A frame both reach
takes the nearer annotated frame's direction (ties go forward, so an annotated frame's own mask is
the forward one); before the first backward run every frame is forward's (frames before the first
mask are background, as in `propagate_masks`). A stream yields the frames its direction decides,
from the first one whose mask may have changed since that direction's last stream (`start=` asks
for more).
"""
from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError
from ..precision import exact_fp32
from .annotations import Annotations, MaskInput, read_annotations
from .api import MaskStream, PresetInput, VideoInput, _annotated_labels, _engine, _open, _progress_bar, _warn_lost_objects
from .cache import FeatureCache
from .engine import Propagator, PropagatorSnapshot
from .encoder import prefetch
from .labels import decode_ids_on_device, finish_ids

__all__ = ["PropagationSession"]

_logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 1 << 30  # 1 GiB: 400 DAVIS-sized frames of ViT-S/16 features (2.5 MB each)
_SNAPSHOT_SHARE = 8  # engine snapshots may take 1/8 of the budget; features the rest


class _States:
    """Engine states kept per direction (0 forward, 1 backward), by the frame each continues from,
    with the bytes of the label tensors they hold (a tensor shared by several states counted once)."""

    def __init__(self) -> None:
        self.kept: tuple[dict[int, PropagatorSnapshot], dict[int, PropagatorSnapshot]] = ({}, {})
        self.nbytes = 0
        self._storages: dict[int, list[int]] = {}  # storage address -> [states holding it, bytes]

    def add(self, direction: int, frame: int, state: PropagatorSnapshot, budget: int) -> None:
        """Keep `state`; beyond `budget` bytes every other state of that direction goes."""
        if frame in self.kept[direction]:
            return
        self.kept[direction][frame] = state
        self._count(state, +1)
        while self.kept[direction] and self.nbytes > budget:
            frames = sorted(self.kept[direction])
            self.drop(direction, frames[1::2] if len(frames) > 1 else frames)

    def drop(self, direction: int, frames: list[int]) -> None:
        for frame in frames:
            self._count(self.kept[direction].pop(frame), -1)

    def clear(self) -> None:
        for direction in (0, 1):
            self.drop(direction, list(self.kept[direction]))

    def _count(self, state: PropagatorSnapshot, change: int) -> None:
        """Count `state`'s storages once more (change +1) or once less (-1)."""
        for key, x in {x.untyped_storage().data_ptr(): x for x in state.tensors}.items():
            entry = self._storages.setdefault(key, [0, x.untyped_storage().nbytes()])
            entry[0] += change
            if entry[0] == 1 and change > 0:
                self.nbytes += entry[1]
            elif entry[0] == 0:
                self.nbytes -= entry[1]
                del self._storages[key]


class PropagationSession:
    """A video opened for interactive propagation: add masks, propagate, correct, propagate again.

    Args:
        video: as `propagate_masks` (a frame folder, a video file, a list of PIL images, an array
            or a tensor); frames are decoded when first needed.
        model, preset, size, device, batch_size, precision: as `propagate_masks`.
        cache_bytes: memory budget of the kept features and engine snapshots, in bytes (default
            1 GiB, on the features' device); beyond it features go to a temporary float32 file.
        snapshot_every: keep the engine's state every this many frames (a correction re-runs the
            engine, never the backbone, over at most this many frames before it).
        spill_dir: folder of the spill file; None: the system's temporary folder (`TMPDIR`).
        progress: show a progress bar on stderr while propagating.

    Raises:
        ValueError: as `propagate_masks` (a video of fewer than 2 frames, a bad size or device),
            or `cache_bytes` / `snapshot_every` out of range.
    """

    def __init__(self, video: VideoInput, *, model: Any = None, preset: PresetInput = None,
                 size: tuple[int, int] | None = None, device: str | torch.device | None = None, batch_size: int = 8,
                 precision: str = "fp32", cache_bytes: int = DEFAULT_CACHE_BYTES, snapshot_every: int = 4,
                 spill_dir: str | os.PathLike | None = None, progress: bool = True) -> None:
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise InvalidInputError(f"cache_bytes={cache_bytes!r}: expected a number of bytes >= 0 (e.g. 2 << 30)")
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise InvalidInputError(f"snapshot_every={snapshot_every!r}: expected an int >= 1")
        self._opened = _open(video, model, preset, size, device, batch_size, precision)
        self._cache = FeatureCache(cache_bytes, spill_dir, reserved=cache_bytes // _SNAPSHOT_SHARE)
        self.snapshot_every = snapshot_every
        self.progress = progress
        self._masks: dict[int, np.ndarray] = {}  # frame -> (H, W) uint8 ids, as given
        self._palettes: dict[int, np.ndarray] = {}  # frame -> palette of its mask, when it had one
        self._states = _States()
        self._stale = [0, len(self)]  # forward: first frame not yielded since its last change; backward: last + 1
        self._backward = False  # a backward stream has been asked for: the nearer annotated frame decides
        self._unwarned: set[int] = set()  # annotated frames not yet checked for objects too small for the grid
        self._version = 0  # bumped by every change of masks: running streams stop
        self._closed = False

    # ------------------------------------------------------------------------------ the masks

    def __len__(self) -> int:
        return len(self._opened.frames)

    @property
    def names(self) -> list[str]:
        """The frames' names (file stems for a frame folder), for naming outputs."""
        return list(self._opened.frames.names)

    @property
    def annotations(self) -> dict[int, np.ndarray]:
        """{frame: (H, W) uint8 object ids} of every mask given so far, in frame order (copies)."""
        return {t: ids.copy() for t, ids in sorted(self._masks.items())}

    @property
    def nbytes(self) -> int:
        """Bytes held in memory by the kept features and engine snapshots (at most `cache_bytes`)."""
        return self._cache.nbytes + self._states.nbytes

    @property
    def spilled_nbytes(self) -> int:
        """Bytes of features in the spill file (0 while everything fits in `cache_bytes`)."""
        return self._cache.spilled_nbytes

    def add_mask(self, t: int, mask: MaskInput, *, threshold: float | None = None) -> None:
        """Give frame t's mask (replacing one given there before), as `propagate_masks(video, {t: mask})`.

        Each object the mask shows takes exactly its pixels at frame t; the others keep their
        propagated labels there; the frame joins the long-term memory. Call `propagate()` next.

        Args:
            t: frame index, 0 <= t < len(session).
            mask: a path, PIL image or (H, W) array of object ids, as `propagate_masks` reads it.
            threshold: binarise a grey or colour mask at this value.

        Raises:
            ValueError: an index out of range, a mask of another size or without an object, a soft
                mask without `threshold`.
            TypeError: `t` is not an int.
        """
        self._check_open()
        frames = self._opened.frames
        read = read_annotations({t: mask}, frames.names, tuple(frames.size), threshold)
        t, before = int(t), self._classes()
        self._masks[t] = read.ids[t]
        self._palettes.pop(t, None)
        if read.palette is not None:
            self._palettes[t] = read.palette
        self._unwarned.add(t)
        self._changed(t, every_frame=not np.array_equal(before, self._classes()))

    def remove_object(self, obj_id: int) -> None:
        """Forget an object: its pixels become background in every mask given (a mask left with no
        object is dropped), as if it had never been given.

        Raises:
            ValueError: no mask given shows `obj_id` (the message lists the ids given).
        """
        self._check_open()
        given = self._classes()[1:].tolist()
        if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)) or int(obj_id) not in given:
            raise InvalidInputError(f"obj_id={obj_id!r}: no mask given shows this object; the ids given are {given}")
        for t in list(self._masks):
            ids = np.where(self._masks[t] == obj_id, 0, self._masks[t]).astype(np.uint8)
            if ids.any():
                self._masks[t] = ids
            else:
                del self._masks[t]
                self._palettes.pop(t, None)
        self._changed(0, every_frame=True)

    def reset(self) -> None:
        """Forget every mask (the features stay: they do not depend on the masks)."""
        self._check_open()
        self._masks.clear()
        self._palettes.clear()
        self._unwarned.clear()
        self._backward = False
        self._changed(0, every_frame=True)

    def close(self) -> None:
        """Free the features and delete the spill file; the session cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            self._version += 1
            self._cache.close()
            self._states.clear()

    def __enter__(self) -> PropagationSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------- propagate

    def propagate(self, *, reverse: bool = False, start: int | None = None, soft: bool = False) -> MaskStream:
        """Propagate the masks given so far: a `MaskStream` of `(t, mask)` (or `(t, mask, soft)`).

        Forward (the default), frames come in increasing order and each equals that frame of
        `propagate_masks(video, session.annotations)`; with `reverse=True` they come in decreasing
        order from the last annotated frame and each equals that frame of the same call on the
        time-reversed video. A stream yields the frames its direction decides (see the module
        docstring: the nearer annotated frame decides once a reverse stream has run), from the
        first frame whose mask may have changed since that direction's last stream.

        Args:
            reverse: propagate towards frame 0.
            start: yield from this frame on (towards frame 0 with `reverse=True`) instead; e.g.
                `start=0` yields every frame of a forward stream.
            soft: also yield the (C, h, w) float32 soft labels at the feature grid.

        Returns:
            A `MaskStream` (`.ids`, `.palette`, `.names`). The engine runs as the stream is
            consumed; a change of masks (`add_mask`, `remove_object`, `reset`) ends it with an error.

        Raises:
            ValueError: no mask given yet, or `start` out of range.
        """
        self._check_open()
        if not self._masks:
            raise InvalidInputError("session: no mask given yet; call session.add_mask(t, mask) first")
        n = len(self)
        if start is not None and (isinstance(start, bool) or not isinstance(start, (int, np.integer))
                                  or not 0 <= start < n):
            raise InvalidInputError(f"start={start!r}: expected a frame index in 0..{n - 1}")
        if reverse and not self._backward:
            self._backward = True  # frames nearer a later annotated frame turn backward's
            self._stale[1] = n
        first = int(start) if start is not None else (self._stale[1] - 1 if reverse else self._stale[0])
        palette = next((self._palettes[t] for t in sorted(self._palettes)), None)
        return MaskStream(self._stream(reverse, first, soft, self._version), self._classes(), palette, self.names)

    def _stream(self, reverse: bool, first: int, soft: bool, version: int) -> Iterator[tuple]:
        opened, step = self._opened, -1 if reverse else 1
        annotated, classes = sorted(self._masks), self._classes()
        order = annotated[::-1] if reverse else annotated  # from where this direction starts
        annotations = Annotations({t: self._masks[t] for t in order}, classes, None)
        origin = annotations.start
        first_labels, later = _annotated_labels(annotations, opened)
        self._warn(annotations, first_labels, later)
        wanted = [t for t in range(first, -1 if reverse else len(self), step) if self._decides(t, reverse, annotated)]
        stale_from = first
        out_size, resize = tuple(opened.frames.size), opened.preset.output_resize

        def emit(t: int, labels: torch.Tensor, ids: np.ndarray) -> tuple:
            if self._version != version:
                raise InvalidInputError("session: the masks changed after this stream started; call "
                                        "session.propagate() again")
            if not reverse and stale_from <= self._stale[0]:  # every frame from the stale one to t is fresh
                self._stale[0] = max(self._stale[0], t + 1)
            elif reverse and stale_from >= self._stale[1] - 1:
                self._stale[1] = min(self._stale[1], t)
            mask = finish_ids(ids, out_size, resize)
            return (t, mask, labels.cpu().numpy()) if soft else (t, mask)

        # frames no propagation reaches (before the first mask, forward only): background
        grid = opened.grid
        background = torch.zeros((len(classes), *grid), dtype=torch.float32)
        background[0] = 1
        blank = np.zeros(opened.size if resize == "pil" else out_size, np.uint8)
        for t in [t for t in wanted if (t - origin) * step < 0]:
            yield emit(t, background.clone(), blank.copy())
        targets = set(t for t in wanted if (t - origin) * step >= 0)
        if not targets:
            return
        stop = max(targets, key=lambda t: (t - origin) * step) + step
        engine, s = self._engine_before(min(targets, key=lambda t: (t - origin) * step), origin, step)
        bar = _progress_bar(abs(stop - s), self.progress, "propagating masks")
        piece: list[tuple[int, torch.Tensor]] = []
        try:
            for f, feats in self._features(range(s, stop, step)):
                done = (f + step - origin) * step  # frames the engine has seen once f is in
                if f == origin:
                    out = engine.reset(feats, first_labels.to(feats.device))[None]
                else:
                    piece.append((f, feats))
                    if not (f in later or len(piece) == opened.encoder.batch_size or f + step == stop
                            or done % self.snapshot_every == 0):
                        continue
                    out = engine.step(torch.stack([x for _, x in piece]))  # (k, C, h, w)
                    if f in later:
                        given, channels = later[f]
                        out = torch.cat([out[:-1], engine.annotate(given.to(out.device), channels)[None]])
                if done % self.snapshot_every == 0:
                    self._states.add(int(reverse), f + step, engine.snapshot(), self._cache.reserved)
                shown = [g for g, _ in piece] if f != origin else [f]
                bar.update(len(shown))
                keep = [i for i, g in enumerate(shown) if g in targets]
                if keep:
                    ids = self._decode(out[keep], classes)
                    for j, i in enumerate(keep):
                        yield emit(shown[i], out[i], ids[j])
                piece = []
        finally:
            bar.close()

    # ----------------------------------------------------------------------------- internals

    def _engine_before(self, head: int, origin: int, step: int) -> tuple[Propagator, int]:
        """An engine restored from the state kept nearest before frame `head` (in the direction
        `step` from `origin`), and the frame it continues from; a fresh engine and `origin` if none."""
        engine, kept = _engine(self._opened.preset), self._states.kept[int(step < 0)]
        behind = [s for s in kept if 0 < (s - origin) * step <= (head - origin) * step]
        if not behind:
            return engine, origin
        s = max(behind, key=lambda s: (s - origin) * step)
        engine.restore(kept[s], lambda e: self._cache.get(origin + e * step))
        return engine, s

    def _classes(self) -> np.ndarray:
        """(C,) uint8 every object id given, ascending, background 0 first (the channel order)."""
        present = [np.unique(ids) for ids in self._masks.values()]
        return np.union1d(np.concatenate(present) if present else np.zeros(0, np.uint8), [0]).astype(np.uint8)

    def _decides(self, t: int, reverse: bool, frames: list[int]) -> bool:
        """Whether the direction (forward, or backward with `reverse`) decides frame t's mask, given
        the annotated frames in increasing order."""
        i = bisect.bisect_right(frames, t)
        before = frames[i - 1] if i else None  # the last annotated frame <= t
        j = bisect.bisect_left(frames, t)
        after = frames[j] if j < len(frames) else None  # the first annotated frame >= t
        forward = before is not None and (not self._backward or after is None or t - before <= after - t)
        if not reverse:
            return forward or (before is None and not self._backward)  # unreached frames: background
        return self._backward and after is not None and not forward

    def _changed(self, t: int, every_frame: bool) -> None:
        """Masks changed at frame t (at every frame when the objects changed): drop what depends on them."""
        self._version += 1
        if every_frame:  # the channels changed: no engine state kept is valid any more
            self._states.clear()
            self._stale = [0, len(self)]
            return
        forward, backward = self._states.kept
        self._states.drop(0, [s for s in forward if s > t])  # forward states at s have seen frames < s
        self._states.drop(1, [s for s in backward if s < t])  # backward states at s have seen frames > s
        self._stale = [min(self._stale[0], t), max(self._stale[1], t + 1)]

    def _features(self, order: range) -> Iterator[tuple[int, torch.Tensor]]:
        """(t, (h, w, D) features) for the frames in `order`: kept ones read back, the others
        encoded in batches of `batch_size` (in `order`, as `propagate_masks` batches them) and kept."""
        frames, i = list(order), 0
        while i < len(frames):
            if frames[i] in self._cache:
                yield frames[i], self._cache.get(frames[i])
                i += 1
                continue
            j = i
            while j < len(frames) and frames[j] not in self._cache:
                j += 1
            for chunk, feats in self._encode(frames[i:j]):
                for t, x in zip(chunk, feats):
                    self._cache.put(t, x)
                yield from zip(chunk, feats)
            i = j

    def _encode(self, frames: list[int]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(frame indices, (k, h, w, D) features) batch by batch; frames decode a batch ahead."""
        video, encoder = self._opened.frames, self._opened.encoder

        def decoded() -> Iterator[tuple[list[int], list[np.ndarray]]]:
            for i in range(0, len(frames), encoder.batch_size):
                chunk = frames[i:i + encoder.batch_size]
                images = {t: video[t] for t in sorted(chunk)}  # in file order: video files decode forwards
                yield chunk, [images[t] for t in chunk]

        for chunk, images in prefetch(decoded(), depth=2):
            yield chunk, encoder(images)

    def _decode(self, labels: torch.Tensor, classes: np.ndarray) -> np.ndarray:
        """(k, C, h, w) soft labels -> (k, H, W) uint8 ids before `finish_ids`, on the host."""
        opened = self._opened
        with exact_fp32(labels.device):
            ids = decode_ids_on_device(labels, classes, opened.size, tuple(opened.frames.size), opened.preset.output_resize)
        return ids.cpu().numpy()

    def _warn(self, annotations: Annotations, first: torch.Tensor, later: dict) -> None:
        """Warn once per mask given about objects that cover no cell of the grid (`propagate_masks`'s warning)."""
        labels = {annotations.start: first, **{t: lab for t, (lab, _) in later.items()}}
        fresh = {t: lab for t, lab in labels.items() if t in self._unwarned}
        if fresh:
            _warn_lost_objects(annotations, fresh, self._opened)
        self._unwarned.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidInputError("session: it was closed; open a new tcore.PropagationSession")
