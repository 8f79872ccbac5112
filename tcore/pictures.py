"""Feature pictures: patch features as colours (PCA) and correspondence heat maps.

One implementation for `tcore features` and the web app (`tcore app`):

- PCA picture: the first three principal components of a frame's patch features, as RGB. The
  components and the range each one is stretched over are fitted once, on a sample of frames
  spread over the video (`fit_pca`), so a feature vector has the same colour in every frame.
- Correspondence map: the cosine affinity between one cell of frame 0 and every cell of frame t:
  the dot product of L2-normalised fp32 features, i.e. the score the propagation engine ranks
  (before its top-k and temperature). Shown as a heat map over frame t, on a fixed scale
  (cosine 0 -> dark, 1 -> bright) so that frames can be compared, with that scale drawn in the
  corner (`draw_heat_scale`): a bright but not white region is a weaker match, not a second one.

Features come from the propagation's encoder (`tcore.propagation.encoder.VideoEncoder`) at the
propagation's working size (the same preset and size rules), so the cells are the ones the engine
matches.

    >>> pictures = FeaturePictures("video.mp4", model="tcore_vits16")
    >>> rgb = pictures.pca_picture(5)                         # (H, W, 3) uint8
    >>> heat = pictures.correspondence_picture(5, (120, 80))  # point (x, y) of frame 0
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import InvalidInputError
from .io import write_images
from .propagation.budget import check_working_size
from .propagation.encoder import VideoEncoder

__all__ = [
    "PCABasis",
    "fit_pca",
    "pca_colours",
    "affinity_map",
    "heat_colours",
    "draw_heat_scale",
    "FeaturePictures",
    "write_feature_video",
]

# Magma-like colour map: cosine 0 (dark) .. 1 (bright), piecewise linear between these stops.
_HEAT_STOPS = np.array([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109],
                        [252, 253, 191]], dtype=np.float64)
_HEAT_ALPHA = 0.7  # opacity of the heat map over the frame
_SCALE_SHADE = 0.35  # the colour scale's box: the picture behind it at this brightness
_N_FIT_FRAMES = 8  # frames the PCA is fitted on, spread evenly over the video
_CACHE_FRAMES = 8  # per-frame features kept in memory by `FeaturePictures`


@dataclass(frozen=True)
class PCABasis:
    """Three principal directions of patch features and the range of each, fitted once.

    Attributes:
        mean: (D,) float64 mean feature of the sample.
        components: (3, D) float64 unit principal directions, by decreasing variance; each
            signed so that its largest-magnitude entry is positive (a reproducible sign).
        low: (3,) float64 projection shown as 0 (the sample's 1st percentile).
        high: (3,) float64 projection shown as 255 (the 99th percentile).
    """

    mean: torch.Tensor
    components: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor


def fit_pca(features: torch.Tensor, quantiles: tuple[float, float] = (0.01, 0.99)) -> PCABasis:
    """Fit the colour basis of PCA pictures on a sample of patch features.

    Args:
        features: (..., D) float features, e.g. (F, h, w, D) from the sampled frames; D >= 3.
        quantiles: the projection quantiles mapped to 0 and 255 in each channel.

    Returns:
        The basis (exact eigen-decomposition of the covariance, in float64 on the CPU).

    Raises:
        InvalidInputError: fewer than 3 feature channels or fewer than 2 feature vectors.
    """
    x = features.detach().reshape(-1, features.shape[-1]).to("cpu", torch.float64)  # (N, D)
    if x.shape[1] < 3 or x.shape[0] < 2:
        raise InvalidInputError(f"features: expected at least 2 vectors of at least 3 channels (..., D), "
                                f"got shape {tuple(features.shape)}")
    mean = x.mean(0)
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    components = vectors[:, -3:].flip(1).T.contiguous()  # (3, D) by decreasing variance
    peak = components.abs().argmax(1)
    components *= torch.sign(components[torch.arange(3), peak])[:, None]
    projected = centred @ components.T  # (N, 3)
    low = torch.quantile(projected, quantiles[0], dim=0)
    high = torch.quantile(projected, quantiles[1], dim=0)
    high = torch.where(high > low, high, low + 1)  # a flat channel shows as 0
    return PCABasis(mean, components, low, high)


def pca_colours(features: torch.Tensor, basis: PCABasis) -> np.ndarray:
    """Colour each feature vector by its first three principal components.

    A pure per-vector function of the features and the basis: the same vector gets the same
    colour wherever and in whichever frame it appears.

    Args:
        features: (..., D) float features (e.g. (h, w, D) of one frame).
        basis: from `fit_pca`.

    Returns:
        (..., 3) uint8 RGB.
    """
    x = features.detach().to("cpu", torch.float64)
    projected = (x - basis.mean) @ basis.components.T  # (..., 3)
    unit = ((projected - basis.low) / (basis.high - basis.low)).clamp(0, 1)
    return (unit * 255).round().to(torch.uint8).numpy()


def affinity_map(query: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Cosine affinity of one feature vector to every cell of a frame, as the engine scores it.

    Args:
        query: (D,) L2-normalised feature (a cell of frame 0).
        features: (h, w, D) L2-normalised features of frame t.

    Returns:
        (h, w) float32 cosines in [-1, 1]: fp32 dot products.
    """
    return features.to(torch.float32) @ query.to(features.device, torch.float32)


def heat_colours(values: np.ndarray, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Colour-map values: `low` and below -> dark, `high` and above -> bright.

    Args:
        values: (...,) float array.
        low, high: the values mapped to the two ends of the colour map.

    Returns:
        (..., 3) uint8 RGB.
    """
    unit = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    position = unit * (len(_HEAT_STOPS) - 1)
    index = np.minimum(position.astype(np.int64), len(_HEAT_STOPS) - 2)
    frac = (position - index)[..., None]
    rgb = _HEAT_STOPS[index] * (1 - frac) + _HEAT_STOPS[index + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def draw_heat_scale(image: np.ndarray, low: float = 0.0, high: float = 1.0, label: str = "cosine") -> np.ndarray:
    """A copy of `image` with the colour scale of `heat_colours` in its bottom-right corner.

    The scale is one line on a darkened box: "<label> <low> [bar from low to high] <high>", its
    size following the picture's height (text about 1/24 of it, at least 10 pixels). A picture too
    small to hold it (under about 100 x 40 pixels) is returned unchanged.

    Args:
        image: (H, W, 3) uint8 RGB, e.g. a heat map blended over a frame.
        low, high: the values at the two ends of the colour map, as given to `heat_colours`.
        label: what the values are.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    height, width = image.shape[:2]
    text_px = max(10, round(height / 24))
    font = ImageFont.load_default(size=text_px)
    pad, bar_w, bar_h = max(2, text_px // 4), max(24, width // 5), max(5, text_px * 2 // 3)
    left, right = f"{label} {low:g}", f"{high:g}"
    left_w, right_w = (round(font.getlength(t)) for t in (left, right))
    box_w, box_h = left_w + bar_w + right_w + 4 * pad, max(text_px, bar_h) + 2 * pad
    if box_w + 2 * pad > width or 3 * box_h > height:
        return image.copy()
    x0, y0 = width - box_w - pad, height - box_h - pad
    out = image.copy()
    out[y0:y0 + box_h, x0:x0 + box_w] = np.rint(out[y0:y0 + box_h, x0:x0 + box_w] * _SCALE_SHADE).astype(np.uint8)
    bar_x, bar_y = x0 + left_w + 2 * pad, y0 + (box_h - bar_h) // 2
    out[bar_y:bar_y + bar_h, bar_x:bar_x + bar_w] = heat_colours(np.linspace(low, high, bar_w), low, high)[None]
    picture = Image.fromarray(out)
    draw = ImageDraw.Draw(picture)
    for text, x in ((left, x0 + pad), (right, bar_x + bar_w + pad)):
        top, bottom = font.getbbox(text)[1::2]
        draw.text((x, y0 + (box_h - (bottom - top)) // 2 - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def _resize(image: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """(h, w) float or (h, w, 3) uint8 image -> (H, W) of the same kind."""
    if image.ndim == 2:
        return np.asarray(Image.fromarray(image.astype(np.float32), "F").resize((size[1], size[0]), resample))
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), resample))


def _mark(image: np.ndarray, xy: tuple[float, float]) -> np.ndarray:
    """A copy of `image` with a ring (white on black) around pixel `xy` = (x, y)."""
    out = Image.fromarray(image)
    draw = ImageDraw.Draw(out)
    radius = max(4, round(min(image.shape[:2]) / 40))
    x, y = xy
    for r, colour, width in ((radius + 1, (0, 0, 0), 4), (radius, (255, 255, 255), 2)):
        draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=width)
    return np.asarray(out)


def _sample_indices(n_frames: int, n: int) -> list[int]:
    """Up to `n` frame indices spread evenly from the first to the last frame."""
    return sorted({round(i) for i in np.linspace(0, n_frames - 1, min(n, n_frames))})


class FeaturePictures:
    """Feature pictures of one video with one backbone: PCA colours and correspondence maps.

    Frames are encoded on demand (a few frames' features are cached); the PCA basis is fitted on
    the first use, on `n_fit_frames` frames spread over the video.

    Args:
        video: anything `tcore.read_video` accepts (frame folder, video file, arrays, ...).
        model: as in `propagate_masks`: None (T-CoRe ViT-S/16, Kinetics-400), a name, a path or a
            module.
        preset: as in `propagate_masks`: the working size rule (None: short side 480).
        size: (H, W) working size overriding the preset.
        device: None picks CUDA, then MPS, then CPU.
        batch_size: frames per backbone call.
        precision: "fp32" (exact) or "bf16" (opt-in autocast).
        n_fit_frames: frames the PCA is fitted on.
    """

    def __init__(self, video: Any, model: Any = None, preset: Any = None, size: tuple[int, int] | None = None,
                 device: str | torch.device | None = None, batch_size: int = 8, precision: str = "fp32",
                 n_fit_frames: int = _N_FIT_FRAMES) -> None:
        opened = VideoEncoder.open(video, model=model, preset=preset, size=size, device=device,
                                   batch_size=batch_size, precision=precision)
        check_working_size(opened.size, opened.encoder.backbone, topk=0, n_context=0, batch_size=batch_size,
                           device=opened.encoder.device)  # before any frame is decoded
        self.frames = opened.frames
        self.encoder = opened.encoder
        self.patch_size = opened.patch_size
        self.n_fit_frames = n_fit_frames
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._basis: PCABasis | None = None

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) cells of the feature grid."""
        return self.encoder.grid

    def features(self, t: int) -> torch.Tensor:
        """(h, w, D) L2-normalised fp32 features of frame t, on the CPU."""
        return self._encode([t])[0]

    @property
    def basis(self) -> PCABasis:
        """The PCA colour basis, fitted once on frames spread over the video."""
        if self._basis is None:
            sample = self._encode(_sample_indices(len(self.frames), self.n_fit_frames))
            self._basis = fit_pca(torch.stack(sample))
        return self._basis

    def cell(self, point: tuple[float, float]) -> tuple[int, int]:
        """(row, col) of the feature cell that holds pixel `point` = (x, y) of a frame.

        Raises:
            InvalidInputError: the point lies outside the frame.
        """
        (height, width), (work_h, work_w) = self.frames.size, self.encoder.size
        x, y = point
        if not (0 <= x < width and 0 <= y < height):
            raise InvalidInputError(f"point: (x, y) = ({x:g}, {y:g}) lies outside the {width}x{height} frame")
        row = int((y + 0.5) * work_h / height) // self.patch_size  # pixel centres, as the bilinear resize
        col = int((x + 0.5) * work_w / width) // self.patch_size
        return min(row, self.grid[0] - 1), min(col, self.grid[1] - 1)

    def cell_centre(self, cell: tuple[int, int]) -> tuple[float, float]:
        """(x, y) pixel position of the centre of feature cell (row, col) in the frames."""
        (height, width), (work_h, work_w) = self.frames.size, self.encoder.size
        return ((cell[1] + 0.5) * self.patch_size * width / work_w - 0.5,
                (cell[0] + 0.5) * self.patch_size * height / work_h - 0.5)

    def pca_picture(self, t: int) -> np.ndarray:
        """(H, W, 3) uint8: frame t's PCA colours, one flat colour per feature cell."""
        return self._pca_panel(self.features(t))

    def affinity(self, t: int, point: tuple[float, float]) -> torch.Tensor:
        """(h, w) cosine affinities of frame 0's cell at `point` (x, y) to frame t's cells."""
        return self._affinity(self.features(t), point)

    def correspondence_picture(self, t: int, point: tuple[float, float]) -> np.ndarray:
        """(H, W, 3) uint8: frame t under the heat map of `affinity(t, point)`, with its colour scale
        (`draw_heat_scale`) and its best cell marked."""
        return self._heat_panel(self.frames[t], self.features(t), point)

    def query_picture(self, point: tuple[float, float]) -> np.ndarray:
        """(H, W, 3) uint8: frame 0 with the centre of `point`'s cell marked."""
        return _mark(self.frames[0], self.cell_centre(self.cell(point)))

    def stream(self, point: tuple[float, float] | None = None) -> Iterator[np.ndarray]:
        """Side-by-side pictures of every frame, decoding and encoding each frame once.

        Args:
            point: None for [frame t | PCA picture of t]; (x, y) of frame 0 for
                [frame 0 with the point | correspondence map in frame t].

        Yields:
            (H, 2W, 3) uint8 RGB, one per frame.
        """
        left = None if point is None else self.query_picture(point)
        batch = self.encoder.batch_size
        for start in range(0, len(self.frames), batch):
            indices = range(start, min(start + batch, len(self.frames)))
            images = {t: self.frames[t] for t in indices}  # decoded in order, once
            for t, feats in zip(indices, self._encode(indices, keep=False, images=images)):
                if point is None:
                    yield np.concatenate([images[t], self._pca_panel(feats)], axis=1)
                else:
                    yield np.concatenate([left, self._heat_panel(images[t], feats, point)], axis=1)

    def _pca_panel(self, features: torch.Tensor) -> np.ndarray:
        return _resize(pca_colours(features, self.basis), self.frames.size, Image.NEAREST)

    def _affinity(self, features: torch.Tensor, point: tuple[float, float]) -> torch.Tensor:
        row, col = self.cell(point)
        return affinity_map(self.features(0)[row, col], features)

    def _heat_panel(self, frame: np.ndarray, features: torch.Tensor, point: tuple[float, float]) -> np.ndarray:
        scores = self._affinity(features, point)  # (h, w)
        best = divmod(int(scores.argmax()), scores.shape[1])
        heat = heat_colours(_resize(scores.numpy(), self.frames.size, Image.BILINEAR))
        blended = np.rint(frame + _HEAT_ALPHA * (heat - frame.astype(np.float64))).astype(np.uint8)
        return _mark(draw_heat_scale(blended), self.cell_centre(best))

    def _encode(self, indices: Sequence[int], keep: bool = True,
                images: dict[int, np.ndarray] | None = None) -> list[torch.Tensor]:
        """Features of frames `indices`: cached ones reused, the rest encoded in batches.

        Args:
            indices: frame indices.
            keep: remember the results (least recently used frames are dropped).
            images: frames already decoded, by index (the others are read from the video).
        """
        images = images or {}
        missing = [t for t in dict.fromkeys(indices) if t not in self._cache]
        found: dict[int, torch.Tensor] = {}
        for start in range(0, len(missing), self.encoder.batch_size):
            chunk = missing[start:start + self.encoder.batch_size]
            batch = [images[t] if t in images else self.frames[t] for t in chunk]
            found.update(zip(chunk, self.encoder(batch).cpu()))
        out = [found[t] if t in found else self._cache[t] for t in indices]
        if keep:
            for t in indices:
                self._cache[t] = found.get(t, self._cache.get(t))
                self._cache.move_to_end(t)
            while len(self._cache) > max(_CACHE_FRAMES, self.n_fit_frames + 1):
                self._cache.popitem(last=False)
        return out


def write_feature_video(video: Any, out: str | Path, point: tuple[float, float] | None = None, *,
                        model: Any = None, preset: Any = None, size: tuple[int, int] | None = None,
                        device: str | torch.device | None = None, batch_size: int = 8, precision: str = "fp32",
                        fps: float | None = None, progress: bool = True) -> Path:
    """Write the PCA video (default) or the correspondence video of one point of frame 0.

    Args:
        video: anything `tcore.read_video` accepts.
        out: ".mp4" (or another video suffix; the `video` extra) or ".gif".
        point: None for the PCA video; (x, y) pixel of frame 0 for the correspondence video.
        model, preset, size, device, batch_size, precision: as in `FeaturePictures`.
        fps: frames per second (default: the video's own, else 10).
        progress: a progress bar on stderr.

    Returns:
        `out`. Each output frame is two panels side by side (see `FeaturePictures.stream`).
    """
    from tqdm.auto import tqdm

    pictures = FeaturePictures(video, model=model, preset=preset, size=size, device=device,
                               batch_size=batch_size, precision=precision)
    if point is not None:
        pictures.cell(point)  # a point outside the frame fails before any work
    images = tqdm(pictures.stream(point), total=len(pictures), disable=not progress, unit="frame",
                  desc="feature pictures", dynamic_ncols=True, leave=False)
    return write_images(out, images, fps or pictures.frames.fps or 10.0)
