"""The label-propagation engine: T-CoRe's semi-supervised protocol, exact and streaming.

The protocol (docs/propagation-protocol.md §5–§7). For a target frame t >= 1 and each of its
h*w query cells, the keys are the cells of

* frame 0, once, unrestricted;
* frame 0 again, restricted to the radius, `n_context + 1 - t` times while t <= n_context (the
  official code pads the video with `n_context` copies of frame 0);
* the previous frames max(1, t - n_context) .. t-1, restricted to the radius,

where "restricted" keeps the keys whose grid cell lies at a Euclidean distance < `radius` (strict,
in grid cells) from the query's cell. Scores are cosines / `temperature` in fp32; the top `topk`
keys of this multiset (duplicates count) get softmax weights, and the query's soft label is the
weighted sum of their soft labels. Predictions are fed back as soft context labels; frame 0's
output is its own labels.

How it is computed here (same top-k multisets and weights, far less work;
docs/propagation-protocol.md §10: the argument in §10.3–§10.4, the numerics in §10.6):

* Frame 0: one score block serves both the unrestricted copy and the restricted ones. Its top-K
  candidates are expanded by their multiplicity (1 + copies inside the radius, 1 outside), capped
  at K, and the first K of that expansion are kept.
* Previous frames: the grid is cut into bands of whole lines along its longer axis; a band's
  queries only meet the key lines within the radius, so key lines out of reach are never scored.
  The scores (F frames, n queries, K_b keys) are reduced to each key cell's best frame, the top-K
  key cells are kept, and the top-K of their F*K scores follows.
* The two candidate lists are merged with one more top-K, and softmax(score / temperature).

Exactness: any element of a multiset's top-K is beaten by fewer than K elements counting
multiplicity, hence by fewer than K distinct elements of its own block, so it is in that block's
top-K; a copy count above K can never be used. Grouping the previous frames' scores by key cell
is the same argument with groups: a group holding a top-K element has its maximum in the top-K
of the group maxima. Up to exact ties (which the official top-k also breaks arbitrarily), the
selected scores, their weights and the labels are those of the padded sequence.

Annotated frames (`Propagator.annotate`, masks given at any frame k): the labels of the last
frame returned are replaced by the annotation merged into them, and that frame takes frame 0's
role from then on: it joins the long-term memory (every later query scores it unrestricted by the
radius, once; it is never evicted, and frame 0 and earlier annotated frames stay there too), and
the short-term context restarts from it as the protocol starts from frame 0: for target t the
previous frames are k+1 .. t-1 (at most `n_context`), and while t - k <= n_context the remaining
`n_context + 1 - (t - k)` slots hold restricted copies of frame k. Frames before k leave the
short-term context at once, so stale labels do not outvote the annotation. With no annotation
the protocol above is unchanged, bit for bit.

Memory: `Propagator` keeps frame 0, the annotated frames, and a deque of the last `n_context`
frames' features and labels; nothing grows with the video length.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..precision import exact_fp32

__all__ = ["Propagator", "PropagatorSnapshot", "propagate_labels"]

_FRAMES_PER_STEP = 8  # frames per `Propagator.step` call in `propagate_labels`
# Query cells per band, per device type, measured on 30x55 grids with benchmarks/propagation.py
# (--bands). CPU: 150 (fewest scored pairs). CUDA (H100, 2026-11-27): 2048 = one band for DAVIS-sized
# grids, 1.57 ms/frame against 1.73 (1024), 1.83 (512) and 2.79 (256): fewer launches beat the
# pairs that banding skips. Larger grids still get bands, so the score block stays bounded.
_BAND_QUERIES = {"cpu": 150, "cuda": 2048}
_BAND_QUERIES_DEFAULT = 512
_NORM_TOLERANCE = 1e-2  # |norm - 1| allowed for "L2-normalised" features (half-precision inputs)


@dataclass(frozen=True)
class _Band:
    """Query lines of the grid and the key lines that can lie within the radius of any of them."""

    queries: slice  # internal cell positions of the band's queries
    keys: slice  # internal cell positions of the keys it may meet
    bias: torch.Tensor | None  # (n, K_b) 0 within the radius, -inf outside; None if all within


@dataclass(frozen=True)
class _Geometry:
    """A grid's cell order, radius disc and bands.

    Cells are ordered line-major along the longer axis: row-major (y, x) when h >= w, else
    column-major (x, y), so that a band of lines is a contiguous range of cells.
    """

    h: int
    w: int
    transposed: bool  # True: internal order is (x, y)
    disc: torch.Tensor  # (lines, cells) bool: offset (|d_line|, |d_cell|) lies within the radius
    line: torch.Tensor  # (N,) int64 line index of each internal cell position
    cell: torch.Tensor  # (N,) int64 position of each internal cell along its line
    bands: tuple[_Band, ...]

    def within(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Whether key cells lie within the radius of query cells (broadcasting int64 positions)."""
        d_line = (self.line[queries] - self.line[keys]).abs()
        d_cell = (self.cell[queries] - self.cell[keys]).abs()
        return self.disc[d_line, d_cell]


@dataclass
class _State:
    """What a `Propagator` holds between steps: the long-term frames (frame 0 and the annotated
    ones) and the last `n_context` frames since the anchor (the frame the context restarts from)."""

    geometry: _Geometry
    long_features: torch.Tensor  # (L, N, D) fp32, internal cell order: frame 0, then annotated frames
    long_labels: torch.Tensor  # (L, N, C) fp32: their labels (label-bank slots 0..L-1)
    features: deque[torch.Tensor]  # each (N, D): frames max(anchor_frame + 1, t-n_context) .. t-1
    labels: deque[torch.Tensor]  # each (N, C): their soft labels
    last_features: torch.Tensor  # (N, D): frame t-1 (the same tensor as features[-1] when there is one)
    last_labels: torch.Tensor  # (N, C): its labels
    long_frames: tuple[int, ...] = (0,)  # frame index of each long-term slot
    anchor: int = 0  # long-term slot of the anchor (the last annotated frame, else frame 0)
    anchor_frame: int = 0  # its frame index
    others: torch.Tensor | None = None  # (M*N, D): the other long-term frames' features, None if none
    other_slots: torch.Tensor | None = None  # (M,) int64: their long-term slots
    t: int = 1  # index of the next frame


@dataclass(frozen=True)
class PropagatorSnapshot:
    """A `Propagator`'s state between two steps, without features (`Propagator.snapshot`).

    The features it would hold (frame 0's, the annotated frames', the context's) are the video's
    own, so the snapshot names those frames and `Propagator.restore` takes their features back
    from the caller (e.g. a feature cache): a snapshot costs labels only. Its label tensors are
    shared with the engine, which never writes in place into a tensor a snapshot can see.

    Attributes:
        params: (topk, temperature, radius, n_context) of the engine that took it.
        geometry: the grid's geometry.
        t: index of the next frame.
        long_frames: frame index of each long-term slot (frame 0, then the annotated frames).
        long_labels: (L, N, C) fp32 their labels, internal cell order.
        labels: each (N, C) fp32, the context frames t - len(labels) .. t-1.
        last_labels: (N, C) fp32 labels of frame t-1.
        anchor: long-term slot of the anchor; anchor_frame: its frame index.
    """

    params: tuple[int, float, float, int]
    geometry: _Geometry
    t: int
    long_frames: tuple[int, ...]
    long_labels: torch.Tensor
    labels: tuple[torch.Tensor, ...]
    last_labels: torch.Tensor
    anchor: int
    anchor_frame: int

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The label tensors it holds (shared storages are the same objects across snapshots)."""
        return (self.long_labels, *self.labels, self.last_labels)


def _build_geometry(h: int, w: int, radius: float, device: torch.device) -> _Geometry:
    """Cell order, radius disc and bands of an (h, w) grid."""
    transposed = w > h
    lines, cells = (w, h) if transposed else (h, w)
    d_line = torch.arange(lines, dtype=torch.float64)
    d_cell = torch.arange(cells, dtype=torch.float64)
    disc = torch.hypot(d_line[:, None], d_cell[None, :]) < radius  # (lines, cells)
    reach = int(disc[:, 0].sum()) - 1  # the largest line offset within the radius
    pos = torch.arange(lines * cells)
    line, cell = pos // cells, pos % cells
    per_band = max(1, round(_BAND_QUERIES.get(device.type, _BAND_QUERIES_DEFAULT) / cells))
    if lines - 1 <= reach:  # every band would meet every key line: one band is cheaper
        per_band = lines
    bands = []
    for l0 in range(0, lines, per_band):
        l1 = min(lines, l0 + per_band)
        k0, k1 = max(0, l0 - reach), min(lines, l1 + reach)
        queries, keys = slice(l0 * cells, l1 * cells), slice(k0 * cells, k1 * cells)
        within = disc[(line[queries, None] - line[None, keys]).abs(), (cell[queries, None] - cell[None, keys]).abs()]
        bias = None
        if not bool(within.all()):
            bias = torch.zeros(within.shape).masked_fill_(~within, float("-inf")).to(device)
        bands.append(_Band(queries, keys, bias))
    return _Geometry(h, w, transposed, disc.to(device), line.to(device), cell.to(device), tuple(bands))


def _first_frame_candidates(
    query: torch.Tensor, first: torch.Tensor, geometry: _Geometry, copies: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K of frame 0's keys counted with multiplicity (1 + `copies` within the radius, else 1).

    Args:
        query: (N, D) fp32 unit features of the target frame, internal order.
        first: (N, D) fp32 unit features of frame 0.
        geometry: the grid's geometry.
        copies: restricted copies of frame 0 in the target's context (0 once t > n_context).
        k: top-K.

    Returns:
        (N, K) cosines in descending order and (N, K) int64 key cells of frame 0.
    """
    values, keys = (query @ first.T).topk(k, dim=1)  # (N, K) each, sorted
    if copies == 0:
        return values, keys
    cells = torch.arange(query.shape[0], device=query.device)[:, None]
    counts = (1 + copies * geometry.within(cells, keys).long()).clamp_(max=k)  # (N, K)
    ranks = torch.arange(k, device=query.device).expand(query.shape[0], k).contiguous()
    pick = torch.searchsorted(counts.cumsum(1), ranks, right=True)  # (N, K) candidate of each rank
    return values.gather(1, pick), keys.gather(1, pick)


def _short_term_candidates(
    query: torch.Tensor, window: torch.Tensor, band: _Band, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-K of the previous frames' keys within the radius, for one band of queries.

    Args:
        query: (n, D) fp32 unit features of the band's query cells.
        window: (F, N, D) fp32 unit features of the F >= 1 previous frames.
        band: the band (key range and radius bias).
        k: top-K.

    Returns:
        (n, K') cosines in descending order (-inf for keys outside the radius, chosen only when
        fewer than K' lie within), (n, K') int64 frame index into `window` and (n, K') int64 key
        cell; K' = min(K, F * K_b).
    """
    frames = window.shape[0]
    scores = torch.matmul(query, window[:, band.keys].transpose(1, 2))  # (F, n, K_b)
    best = scores.amax(0)  # (n, K_b) best frame of each key cell
    if band.bias is not None:
        best += band.bias
    k_cells = min(k, best.shape[1])
    cells = best.topk(k_cells, dim=1).indices  # (n, Kc): the top-K lies in these key cells
    cand = scores.gather(2, cells.expand(frames, -1, -1))  # (F, n, Kc)
    if band.bias is not None:
        cand += band.bias.gather(1, cells)
    cand = cand.permute(1, 0, 2).reshape(query.shape[0], frames * k_cells)  # (n, F*Kc), frame-major
    values, flat = cand.topk(min(k, frames * k_cells), dim=1)
    return values, flat // k_cells, cells.gather(1, flat % k_cells) + band.keys.start


def _target_affinity(
    query: torch.Tensor, anchor: torch.Tensor, anchor_slot: int, others: torch.Tensor | None,
    other_slots: torch.Tensor | None, window: torch.Tensor, window_slot: int, copies: int, geometry: _Geometry,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The K selected keys of one target frame: their cosines and their cells in the label bank.

    Args:
        query: (N, D) fp32 unit features of the target frame.
        anchor: (N, D) fp32 unit features of the anchor (frame 0, or the last annotated frame).
        anchor_slot: its label-bank slot.
        others: (M*N, D) fp32 unit features of the other long-term frames, unrestricted keys
            counted once; None when there are none (no annotation).
        other_slots: (M,) int64 their label-bank slots.
        window: (F, N, D) fp32 unit features of its previous frames (F may be 0).
        window_slot: label-bank slot of `window[0]`.
        copies: restricted copies of the anchor in its context.
        geometry: the grid's geometry.
        k: top-K.

    Returns:
        (N, K) cosines (descending) and (N, K) int64 flat label-bank indices (slot * N + cell).
    """
    n_cells = query.shape[0]
    values, sources = _first_frame_candidates(query, anchor, geometry, copies, k)
    if anchor_slot:
        sources = sources + anchor_slot * n_cells
    if others is not None:  # one unrestricted block: its top-K holds every key it can contribute
        v, key = (query @ others.T).topk(min(k, others.shape[0]), dim=1)  # (N, K)
        values, pick = torch.cat([values, v], 1).topk(k, dim=1)
        flat = other_slots[key // n_cells] * n_cells + key % n_cells
        sources = torch.cat([sources, flat], 1).gather(1, pick)
    if window.shape[0] == 0:
        return values, sources
    values, sources = values.clone(), sources.clone()
    for band in geometry.bands:
        q = band.queries
        v, frame, cell = _short_term_candidates(query[q], window, band, k)
        merged, pick = torch.cat([values[q], v], 1).topk(k, dim=1)  # (n, K)
        sources[q] = torch.cat([sources[q], (window_slot + frame) * n_cells + cell], 1).gather(1, pick)
        values[q] = merged
    return values, sources


def _check_tensor(name: str, x: object, shape_doc: str, ndim: int) -> torch.Tensor:
    """A floating tensor of `ndim` dimensions, or a clear error naming the argument."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {shape_doc}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected shape {shape_doc}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}; convert it with .float()")
    return x


def _check_unit_norm(name: str, x: torch.Tensor) -> None:
    """Features must be L2-normalised over their last axis (scores are plain dot products)."""
    norms = torch.linalg.vector_norm(x, dim=-1)
    if not bool(((norms - 1).abs() <= _NORM_TOLERANCE).all()):
        bad = norms[~((norms - 1).abs() <= _NORM_TOLERANCE)][0].item()
        raise ValueError(
            f"{name}: features must be L2-normalised over D (found a norm of {bad:.4g}); "
            "apply torch.nn.functional.normalize(features, dim=-1) first"
        )


def _check_positive_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def _check_positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    return float(value)


def _to_cells(feats: torch.Tensor, geometry: _Geometry) -> torch.Tensor:
    """(k, h, w, D) -> (k, N, D) fp32 contiguous in internal cell order."""
    if geometry.transposed:
        feats = feats.transpose(1, 2)  # (k, w, h, D)
    return feats.reshape(feats.shape[0], geometry.h * geometry.w, feats.shape[-1]).to(torch.float32).contiguous()


def _labels_to_cells(labels: torch.Tensor, geometry: _Geometry) -> torch.Tensor:
    """(C, h, w) -> (N, C) fp32, a new contiguous tensor in internal cell order."""
    cells = labels.permute(2, 1, 0) if geometry.transposed else labels.permute(1, 2, 0)  # (w, h, C) | (h, w, C)
    out = torch.empty((geometry.h * geometry.w, labels.shape[0]), dtype=torch.float32, device=labels.device)
    return out.copy_(cells.reshape(-1, labels.shape[0]))


def _labels_from_cells(labels: torch.Tensor, geometry: _Geometry) -> torch.Tensor:
    """(k, N, C) internal cell order -> (k, C, h, w) contiguous."""
    k, _, c = labels.shape
    if geometry.transposed:
        return labels.view(k, geometry.w, geometry.h, c).permute(0, 3, 2, 1).contiguous()  # (k, C, h, w)
    return labels.view(k, geometry.h, geometry.w, c).permute(0, 3, 1, 2).contiguous()  # (k, C, h, w)


class Propagator:
    """Streaming label propagation with T-CoRe's protocol (top-K affinity over frame 0 and the
    previous `n_context` frames, frame 0 counted with the padded sequence's multiplicities), and
    annotations at any later frame.

    >>> prop = Propagator(topk=7, temperature=0.7, radius=20, n_context=20)
    >>> out0 = prop.reset(features[0], first_labels)   # (C, h, w): frame 0's labels
    >>> out = prop.step(features[1:11])                # (10, C, h, w): frames 1..10
    >>> out10 = prop.annotate(labels_10, [2])          # frame 10: channel 2's (a new object's) mask given
    >>> out = prop.step(features[11:19])               # frames 11..18: frame 10 now plays frame 0's role
    >>> state = prop.snapshot()                        # labels only; prop.restore(state, features.__getitem__)

    Memory is bounded by the context (frame 0 + annotated frames + `n_context` frames), not the
    video length. Tensors stay on the device of the first frame's features (CPU or CUDA); every
    computation is exact fp32 whatever the caller's autocast or TF32 settings. `step` results do
    not depend on how frames are grouped into steps.

    Args:
        topk: number K of keys each query takes (7 for DAVIS and JHMDB, 10 for VIP).
        temperature: softmax temperature applied to the cosines (0.7 in the paper).
        radius: spatial radius in grid cells for the previous frames (strict `<`; 20 in the paper).
        n_context: number of previous frames in the context (20 in the paper).
        check_norms: check in every `step` that the features are L2-normalised. The check reads a
            result back from the device (a synchronisation per step on GPUs); callers that
            normalise the features themselves may turn it off. `reset` always checks.

    Raises:
        ValueError: a hyper-parameter out of range.
    """

    def __init__(self, topk: int = 7, temperature: float = 0.7, radius: float = 20, n_context: int = 20,
                 check_norms: bool = True) -> None:
        self.topk = _check_positive_int("topk", topk, 1)
        self.temperature = _check_positive_float("temperature", temperature)
        self.radius = _check_positive_float("radius", radius)
        self.n_context = _check_positive_int("n_context", n_context, 0)
        self.check_norms = bool(check_norms)
        self._state: _State | None = None

    def __repr__(self) -> str:
        return (f"Propagator(topk={self.topk}, temperature={self.temperature}, radius={self.radius:g}, "
                f"n_context={self.n_context})")

    @property
    def frame_index(self) -> int:
        """Index of the next frame `step` expects (1 right after `reset`)."""
        return self._require_state().t

    @property
    def nbytes(self) -> int:
        """Bytes of tensor storage held between steps (features, labels and grid geometry).

        Whole storages are counted, so a view that kept a larger buffer alive would show.
        """
        if self._state is None:
            return 0
        s, g = self._state, self._state.geometry
        tensors = [s.long_features, s.long_labels, *s.features, *s.labels, s.last_features, s.last_labels,
                   g.disc, g.line, g.cell]
        tensors += [x for x in (s.others, s.other_slots) if x is not None]
        tensors += [band.bias for band in g.bands if band.bias is not None]
        storages = {x.untyped_storage().data_ptr(): x.untyped_storage().nbytes() for x in tensors}
        return sum(storages.values())

    def snapshot(self) -> PropagatorSnapshot:
        """The state between steps, labels only: `restore` continues from it bit for bit.

        Raises:
            RuntimeError: `reset` was not called.
        """
        s = self._require_state()
        return PropagatorSnapshot((self.topk, self.temperature, self.radius, self.n_context), s.geometry, s.t,
                                  s.long_frames, s.long_labels, tuple(s.labels), s.last_labels, s.anchor,
                                  s.anchor_frame)

    @torch.inference_mode()
    def restore(self, snapshot: PropagatorSnapshot, features: Callable[[int], torch.Tensor]) -> None:
        """Continue from a snapshot: the next `step` returns what it returned after the snapshot.

        Args:
            snapshot: from `snapshot()` of an engine with the same hyper-parameters.
            features: frame index -> (h, w, D) float, L2-normalised features of that frame, the
                very values the engine was given (frames counted from 0 at `reset`).

        Raises:
            ValueError: the snapshot was taken with other hyper-parameters.
        """
        params = (self.topk, self.temperature, self.radius, self.n_context)
        if snapshot.params != params:
            raise ValueError(f"snapshot: taken with (topk, temperature, radius, n_context)={snapshot.params}, "
                             f"this engine has {params}")
        g, t = snapshot.geometry, snapshot.t
        long_features = _to_cells(torch.stack([features(f) for f in snapshot.long_frames]), g)  # (L, N, D)
        context = range(t - len(snapshot.labels), t)
        state = _State(geometry=g, long_features=long_features, long_labels=snapshot.long_labels,
                       features=deque((_to_cells(features(f)[None], g)[0] for f in context), maxlen=self.n_context),
                       labels=deque(snapshot.labels, maxlen=self.n_context), last_features=long_features[0],
                       last_labels=snapshot.last_labels, long_frames=snapshot.long_frames, anchor=snapshot.anchor,
                       anchor_frame=snapshot.anchor_frame, t=t)
        if state.features:
            state.last_features = state.features[-1]
        elif t - 1 == snapshot.anchor_frame:
            state.last_features = long_features[snapshot.anchor]
        else:
            state.last_features = _to_cells(features(t - 1)[None], g)[0]
        _set_others(state)
        self._state = state

    @torch.inference_mode()
    def reset(self, first_features: torch.Tensor, first_labels: torch.Tensor) -> torch.Tensor:
        """Start a video.

        Args:
            first_features: (h, w, D) float, L2-normalised over D: frame 0's features.
            first_labels: (C, h, w) float soft labels of frame 0 (e.g. one-hot averaged to the grid).

        Returns:
            (C, h, w) fp32: frame 0's output, i.e. its own labels.

        Raises:
            TypeError: an argument is not a tensor.
            ValueError: bad shapes, dtypes, devices, norms, or `topk` larger than h*w.
        """
        feats = _check_tensor("first_features", first_features, "(h, w, D)", 3)
        labels = _check_tensor("first_labels", first_labels, "(C, h, w)", 3)
        h, w, dim = feats.shape
        if tuple(labels.shape[1:]) != (h, w) or labels.shape[0] < 1:
            raise ValueError(f"first_labels: expected shape (C, {h}, {w}) matching first_features "
                             f"{tuple(feats.shape)}, got {tuple(labels.shape)}")
        if labels.device != feats.device:
            raise ValueError(f"first_labels is on {labels.device} but first_features on {feats.device}; "
                             "move both to the same device")
        if dim < 1:
            raise ValueError(f"first_features: feature width D must be >= 1, got shape {tuple(feats.shape)}")
        if self.topk > h * w:
            raise ValueError(f"topk={self.topk} exceeds the {h}x{w}={h * w} keys of a frame; "
                             "use a smaller topk or a finer grid")
        _check_unit_norm("first_features", feats)
        if not bool(torch.isfinite(labels).all()):
            raise ValueError("first_labels: contains NaN or infinite values")
        geometry = _build_geometry(h, w, self.radius, feats.device)
        first = _to_cells(feats[None], geometry).clone()  # (1, N, D)
        cells = _labels_to_cells(labels, geometry)[None]  # (1, N, C)
        self._state = _State(geometry=geometry, long_features=first, long_labels=cells,
                             features=deque(maxlen=self.n_context), labels=deque(maxlen=self.n_context),
                             last_features=first[0], last_labels=cells[0])
        return labels.to(torch.float32, copy=True).contiguous()

    @torch.inference_mode()
    def step(self, features: torch.Tensor) -> torch.Tensor:
        """Propagate to the next k frames.

        The k frames' affinities are computed first (they depend on features only), then the
        label recurrence runs frame by frame; the result equals k steps of one frame.

        Args:
            features: (k, h, w, D) float, L2-normalised over D: the next k frames, same grid, width
                and device as frame 0.

        Returns:
            (k, C, h, w) fp32 soft labels of these frames.

        Raises:
            RuntimeError: `reset` was not called.
            TypeError: `features` is not a tensor.
            ValueError: bad shape, dtype, device or norms.
        """
        state = self._require_state()
        frames = self._check_frames(features, state)
        n_new, n_cells = frames.shape[0], frames.shape[1]
        if n_new == 0:
            return frames.new_empty((0, state.long_labels.shape[2], state.geometry.h, state.geometry.w))
        n_old, n_long = len(state.features), state.long_labels.shape[0]
        window = torch.cat([*(f[None] for f in state.features), frames]) if n_old else frames  # (F, N, D)
        base = state.t - n_old  # frame index of window[0]
        values = frames.new_empty((n_new, n_cells, self.topk))
        sources = torch.empty((n_new, n_cells, self.topk), dtype=torch.long, device=frames.device)
        with exact_fp32(frames.device):
            for i in range(n_new):
                t = state.t + i
                lo = max(state.anchor_frame + 1, t - self.n_context)
                values[i], sources[i] = _target_affinity(
                    frames[i], state.long_features[state.anchor], state.anchor, state.others, state.other_slots,
                    window[lo - base:t - base], n_long + lo - base,
                    max(0, self.n_context + 1 - (t - state.anchor_frame)), state.geometry, self.topk,
                )
            weights = torch.softmax(values / self.temperature, dim=-1)  # (k, N, K)
            bank = torch.cat([state.long_labels, *(x[None] for x in state.labels),
                              state.long_labels.new_empty((n_new, *state.long_labels.shape[1:]))])  # (L+F0+k, N, C)
            flat = bank.view(-1, bank.shape[-1])  # (slots*N, C)
            new = len(bank) - n_new
            for i in range(n_new):
                bank[new + i] = (weights[i, :, :, None] * flat[sources[i]]).sum(1)  # (N, C)
        new_labels = bank[new:]  # (k, N, C)
        for i in range(max(0, n_new - self.n_context), n_new):  # only the last n_context frames stay
            state.features.append(frames[i].clone())
            state.labels.append(new_labels[i].clone())
        if self.n_context:
            state.last_features, state.last_labels = state.features[-1], state.labels[-1]
        else:
            state.last_features, state.last_labels = frames[-1].clone(), new_labels[-1].clone()
        state.t += n_new
        return _labels_from_cells(new_labels, state.geometry)

    @torch.inference_mode()
    def annotate(self, labels: torch.Tensor, channels: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Merge annotated labels into the last frame returned (by `reset` or `step`); that frame
        then takes frame 0's role (see the module docstring).

        The given channels take exactly the given values; every other channel keeps its
        propagated share of what is left (per cell, 1 minus the given channels' sum, split in
        proportion to the propagated values; all of it to channel 0, the background, where those
        are all 0). The frame joins the long-term memory (scored unrestricted by the radius, once,
        by every later frame; never evicted) and the short-term context restarts from it (its
        restricted copies fill the slots of the frames before it). Frame 0, or a frame annotated
        again, is merged in place (a second annotation of a frame merges into the first).

        Args:
            labels: (C, h, w) float annotated soft labels (values outside `channels` are ignored).
            channels: the channels the annotation gives (e.g. the objects its mask shows, without
                the background); None gives every channel (the labels replace the frame's).

        Returns:
            (C, h, w) fp32: the frame's merged labels (its output).

        Raises:
            RuntimeError: `reset` was not called.
            TypeError: `labels` is not a tensor.
            ValueError: a bad shape, device, non-finite values, or a channel out of range.
        """
        state = self._require_state()
        g, n_classes = state.geometry, state.long_labels.shape[2]
        given = _check_tensor("labels", labels, "(C, h, w)", 3)
        if tuple(given.shape) != (n_classes, g.h, g.w):
            raise ValueError(f"labels: expected shape ({n_classes}, {g.h}, {g.w}) as frame 0's labels, "
                             f"got {tuple(given.shape)}")
        if given.device != state.long_features.device:
            raise ValueError(f"labels are on {given.device} but frame 0 was on {state.long_features.device}; "
                             "keep one device per video")
        if not bool(torch.isfinite(given).all()):
            raise ValueError("labels: contains NaN or infinite values")
        mask = self._given_channels(channels, n_classes, given.device)
        with exact_fp32(given.device):
            merged = _merge_annotation(state.last_labels, _labels_to_cells(given, g), mask)  # (N, C)
        frame = state.t - 1
        if frame == state.anchor_frame:  # frame 0 right after reset, or a frame annotated again
            state.long_labels = state.long_labels.clone()  # never in place: snapshots share it
            state.long_labels[state.anchor] = merged
        else:
            state.long_features = torch.cat([state.long_features, state.last_features[None]])
            state.long_labels = torch.cat([state.long_labels, merged[None]])
            state.long_frames += (frame,)
            state.anchor, state.anchor_frame = len(state.long_labels) - 1, frame
            state.features.clear()  # the context restarts from the annotated frame
            state.labels.clear()
            _set_others(state)
        state.last_features, state.last_labels = state.long_features[state.anchor], merged
        return _labels_from_cells(merged[None], g)[0]

    @staticmethod
    def _given_channels(channels: Sequence[int] | torch.Tensor | None, n_classes: int,
                        device: torch.device) -> torch.Tensor:
        """(C,) bool mask of the channels an annotation gives."""
        mask = torch.zeros(n_classes, dtype=torch.bool, device=device)
        if channels is None:
            return mask.fill_(True)
        index = torch.as_tensor(channels, dtype=torch.long).flatten()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_classes):
            raise ValueError(f"channels: expected channel indices in 0..{n_classes - 1}, got {index.tolist()}")
        mask[index.to(device)] = True
        return mask

    def _require_state(self) -> _State:
        if self._state is None:
            raise RuntimeError("Propagator.reset(first_features, first_labels) must be called before step()")
        return self._state

    def _check_frames(self, features: object, state: _State) -> torch.Tensor:
        """(k, h, w, D) user frames -> (k, N, D) fp32 in internal cell order, or a clear error."""
        feats = _check_tensor("features", features, "(k, h, w, D)", 4)
        g, dim = state.geometry, state.long_features.shape[2]
        if tuple(feats.shape[1:3]) != (g.h, g.w):
            raise ValueError(f"features: grid {tuple(feats.shape[1:3])} differs from frame 0's ({g.h}, {g.w}); "
                             "call reset() to start a video with another grid")
        if feats.shape[3] != dim:
            raise ValueError(f"features: width D={feats.shape[3]} differs from frame 0's D={dim}")
        if feats.device != state.long_features.device:
            raise ValueError(f"features are on {feats.device} but frame 0 was on {state.long_features.device}; "
                             "keep one device per video")
        if self.check_norms:
            _check_unit_norm("features", feats)
        return _to_cells(feats, g)


def _set_others(state: _State) -> None:
    """The long-term frames other than the anchor, as one unrestricted key block (None if none)."""
    others = [i for i in range(len(state.long_labels)) if i != state.anchor]
    if not others:
        state.others = state.other_slots = None
        return
    state.others = state.long_features[others].reshape(-1, state.long_features.shape[2])  # (M*N, D)
    state.other_slots = torch.tensor(others, dtype=torch.long, device=state.long_features.device)


def _merge_annotation(current: torch.Tensor, given: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Annotated channels take the given values; the others share what is left in proportion.

    Args:
        current: (N, C) fp32 propagated labels of the frame.
        given: (N, C) fp32 annotated labels (only the `mask` channels are read).
        mask: (C,) bool, the given channels.

    Returns:
        (N, C) fp32 merged labels (a new tensor).
    """
    merged = torch.zeros_like(current)
    merged[:, mask] = given[:, mask]
    rest = (1 - given[:, mask].sum(1, keepdim=True)).clamp_(min=0)  # (N, 1)
    others = current[:, ~mask]  # (N, C')
    total = others.sum(1, keepdim=True)
    share = torch.where(total > 0, others / total.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
    if not bool(mask[0]):  # cells whose other channels are all 0 give what is left to the background
        share[:, 0] = torch.where(total[:, 0] > 0, share[:, 0], 1.0)
    merged[:, ~mask] = share * rest
    return merged


def propagate_labels(
    features: torch.Tensor, first_labels: torch.Tensor, topk: int = 7, temperature: float = 0.7,
    radius: float = 20, n_context: int = 20,
) -> torch.Tensor:
    """Propagate frame 0's soft labels through a video with T-CoRe's protocol.

    A loop over `Propagator.step`; see `Propagator` for the protocol and its arguments.

    Args:
        features: (T, h, w, D) float, L2-normalised over D, T >= 1: every frame's features.
        first_labels: (C, h, w) float soft labels of frame 0.
        topk: keys per query (7 for DAVIS and JHMDB, 10 for VIP).
        temperature: softmax temperature on cosines (0.7).
        radius: spatial radius in grid cells for the previous frames (strict; 20).
        n_context: previous frames in the context (20).

    Returns:
        (T, C, h, w) fp32 soft labels on `features`' device; frame 0's are `first_labels`.

    Raises:
        TypeError: an argument is not a tensor.
        ValueError: bad shapes, dtypes, devices, norms or hyper-parameters.
    """
    feats = _check_tensor("features", features, "(T, h, w, D)", 4)
    if feats.shape[0] < 1:
        raise ValueError("features: expected at least one frame (T >= 1), got T=0")
    prop = Propagator(topk=topk, temperature=temperature, radius=radius, n_context=n_context)
    first = prop.reset(feats[0], first_labels)
    out = torch.empty((feats.shape[0], *first.shape), dtype=torch.float32, device=feats.device)  # (T, C, h, w)
    out[0] = first
    for t0 in range(1, feats.shape[0], _FRAMES_PER_STEP):
        out[t0:t0 + _FRAMES_PER_STEP] = prop.step(feats[t0:t0 + _FRAMES_PER_STEP])
    return out
