"""Label conversions at the feature grid, exactly as the paper's evaluation does them
(docs/propagation-protocol.md §4 and §8).

In: object ids -> OpenCV's nearest resize to the working size -> soft one-hot at the grid (each
cell = the mean of the 2x2 centre pixels of its patch, i.e. OpenCV/torch bilinear downscaling by
the patch size); keypoints -> the reference's
Gaussian heatmaps (sigma 0.5 cells, its window rules). Out: bilinear upsampling -> argmax (first
maximum wins) -> nearest back to the original size (OpenCV's, or PIL NEAREST for VIP);
heatmaps -> top-5 soft-argmax.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "opencv_nearest_indices",
    "soft_onehot_at_grid",
    "soft_cover_at_grid",
    "decode_ids",
    "decode_ids_on_device",
    "finish_ids",
    "keypoint_heatmaps",
    "decode_keypoints",
]


def opencv_nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output index of a nearest resize, exactly as OpenCV's INTER_NEAREST.

    OpenCV computes `min(floor(i * (1.0 / (n_out / n_in))), n_in - 1)` in double precision. The
    exact integer form `(i * n_in) // n_out` is NOT the same: where `i * n_in / n_out` is an
    integer, the double product can round just below it and OpenCV reads the source index one
    lower (576 -> 448: output 168 reads source 215, not 216). Every nearest resize that stands in
    for an OpenCV one (first-mask labels at the working size, DAVIS outputs back to the original
    size) uses this function.

    Args:
        n_out: output length (pixels along one axis).
        n_in: input length.

    Returns:
        (n_out,) int64 source indices in [0, n_in - 1].
    """
    scale = 1.0 / (n_out / n_in)  # float64, the same two roundings as OpenCV
    index = np.floor(np.arange(n_out, dtype=np.float64) * scale).astype(np.int64)
    return np.minimum(index, n_in - 1)


def soft_onehot_at_grid(ids: np.ndarray, classes: np.ndarray, size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """First-frame labels at the feature grid.

    The mask is resized to `size` with OpenCV's nearest (`opencv_nearest_indices`), one-hot
    encoded, and downscaled by `patch_size` with bilinear (half-pixel centres, no antialias):
    each cell is the mean of the pixels at offsets {(p-1)//2, p//2} of its patch in both axes
    (the 2x2 centre for even p). Only those pixels are read.

    Args:
        ids: (H, W) integer object ids at the original size.
        classes: (C,) the ids, one channel each, in channel order.
        size: (H', W') working size, multiples of `patch_size`.
        patch_size: p.

    Returns:
        (C, H'/p, W'/p) float32 soft labels; each cell sums to 1 when every id is in `classes`.
    """
    hh, ww = size
    h, w = hh // patch_size, ww // patch_size
    offsets = sorted({(patch_size - 1) // 2, patch_size // 2})
    rows = np.add.outer(np.arange(h) * patch_size, offsets).ravel()  # (h*n,) in the resized image
    cols = np.add.outer(np.arange(w) * patch_size, offsets).ravel()  # (w*n,)
    src_rows = opencv_nearest_indices(hh, ids.shape[0])[rows]
    src_cols = opencv_nearest_indices(ww, ids.shape[1])[cols]
    sampled = ids[np.ix_(src_rows, src_cols)]  # (h*n, w*n)
    lut = np.full(256, -1, dtype=np.int64)
    lut[classes] = np.arange(len(classes))
    channel = torch.from_numpy(lut[sampled])  # (h*n, w*n)
    n = len(offsets)
    onehot = F.one_hot(channel.clamp(min=0), len(classes)).float() * (channel >= 0)[..., None]
    onehot = onehot.reshape(h, n, w, n, len(classes)).mean(dim=(1, 3))  # (h, w, C)
    return onehot.permute(2, 0, 1).contiguous()  # (C, h, w)


def soft_cover_at_grid(ids: np.ndarray, classes: np.ndarray, size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Labels of a mask given after propagation has started: each cell is the share of its patch's
    pixels that each id covers (docs/propagation-protocol.md §12).

    The mask is resized to `size` with OpenCV's nearest (`opencv_nearest_indices`), as the first
    mask is; then, unlike `soft_onehot_at_grid` (the paper's 2x2 centre sample, which a later mask
    must not use: it would replace propagated labels that know where a boundary crosses a cell by
    0/1 values that do not, see the protocol document), every pixel of the patch counts.
    Arguments as `soft_onehot_at_grid`.

    Returns:
        (C, H'/p, W'/p) float32 soft labels, multiples of 1/p^2; each cell sums to 1 when every id
        is in `classes` (pixels of other ids count for no channel).
    """
    hh, ww = size
    h, w, n_classes = hh // patch_size, ww // patch_size, len(classes)
    resized = ids[np.ix_(opencv_nearest_indices(hh, ids.shape[0]), opencv_nearest_indices(ww, ids.shape[1]))]
    lut = np.full(256, -1, dtype=np.int64)
    lut[classes] = np.arange(n_classes)
    channel = lut[resized]  # (H', W')
    cell = (np.arange(hh)[:, None] // patch_size) * w + np.arange(ww)[None, :] // patch_size  # (H', W')
    known = channel >= 0
    counts = np.bincount(cell[known] * n_classes + channel[known], minlength=h * w * n_classes)  # (h*w*C,)
    cover = torch.from_numpy(counts.reshape(h, w, n_classes)).float() / patch_size ** 2  # (h, w, C)
    return cover.permute(2, 0, 1).contiguous()  # (C, h, w)


def decode_ids(labels: torch.Tensor, classes: np.ndarray, work_size: tuple[int, int], out_size: tuple[int, int],
               output_resize: str = "floor") -> np.ndarray:
    """Soft labels at the grid -> object ids at the original size.

    Args:
        labels: (C, h, w) float soft labels (any device).
        classes: (C,) uint8 id of each channel.
        work_size: (H', W') working size: bilinear upsampling target (half-pixel centres).
        out_size: (H, W) original size.
        output_resize: "floor" (OpenCV INTER_NEAREST, `opencv_nearest_indices`: DAVIS) or "pil"
            (PIL NEAREST: the VIP evaluator).

    Returns:
        (H, W) uint8 ids; ties go to the lower channel (background first).
    """
    ids = decode_ids_on_device(labels[None], classes, work_size, out_size, output_resize)[0]
    return finish_ids(ids.cpu().numpy(), out_size, output_resize)


def decode_ids_on_device(labels: torch.Tensor, classes: np.ndarray, work_size: tuple[int, int],
                         out_size: tuple[int, int], output_resize: str = "floor") -> torch.Tensor:
    """The device part of `decode_ids` for k frames: upsampling, argmax, id lookup, OpenCV nearest.

    Args:
        labels: (k, C, h, w) float soft labels.
        classes, work_size, out_size, output_resize: as in `decode_ids`.

    Returns:
        (k, H, W) uint8 ids on the labels' device; for `output_resize="pil"` (k, H', W') at the
        working size, to be resized on the host by `finish_ids`.
    """
    device = labels.device
    lut = torch.as_tensor(np.asarray(classes, dtype=np.uint8)).to(device, non_blocking=True)
    floor = output_resize != "pil" and tuple(work_size) != tuple(out_size)
    rows = _device_indices(out_size[0], work_size[0], device) if floor else None
    cols = _device_indices(out_size[1], work_size[1], device) if floor else None
    out = []
    for frame in labels:  # one frame at a time: the upsampled labels hold C * H' * W' floats
        up = F.interpolate(frame[None].float(), size=work_size, mode="bilinear", align_corners=False)[0]
        ids = lut[up.argmax(dim=0)]  # (H', W') uint8; the first maximum wins
        out.append(ids[rows][:, cols] if floor else ids)
    return torch.stack(out)


def finish_ids(ids: np.ndarray, out_size: tuple[int, int], output_resize: str = "floor") -> np.ndarray:
    """The host part of `decode_ids`: PIL NEAREST to `out_size` for `output_resize="pil"`, else `ids`."""
    if output_resize != "pil" or tuple(ids.shape) == tuple(out_size):
        return ids
    from PIL import Image

    return np.asarray(Image.fromarray(ids).resize((out_size[1], out_size[0]), Image.NEAREST))


@functools.lru_cache(maxsize=32)
def _device_indices(n_out: int, n_in: int, device: torch.device) -> torch.Tensor:
    """`opencv_nearest_indices(n_out, n_in)` as an int64 tensor on `device` (cached: one copy per size)."""
    return torch.from_numpy(opencv_nearest_indices(n_out, n_in)).to(device)


def _gaussian_window(center: float, length: int) -> tuple[slice, slice] | None:
    """The reference's 1-D window for sigma 0.5: corners int(p - 1.5) and int(p + 2.5) (Python
    truncation toward zero), a 4-tap kernel centred at index 2. Returns (grid slice, kernel slice)
    or None when the window lies outside the grid."""
    ul, br = int(center - 1.5), int(center + 2.5)
    if ul >= length or br < 0:
        return None
    return slice(max(0, ul), min(br, length)), slice(max(0, -ul), min(br, length) - ul)


_OFFSETS = np.arange(4.0) - 2.0
_KERNEL = np.exp(-(_OFFSETS[:, None] ** 2 + _OFFSETS[None, :] ** 2) / (2 * 0.5 ** 2)).astype(np.float32)


def keypoint_heatmaps(points: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """The reference's first-frame keypoint labels: [background, joint_1..joint_K].

    Args:
        points: (K, 2) float (x, y) positions in grid cells (pixel / stride). NaN marks a joint
            the first frame does not show (all-zero heatmap); points just outside the grid keep the
            part of their window that overlaps it, as in the reference.
        grid: (h, w).

    Returns:
        (K+1, h, w) float32: channel 0 is 1 where every joint heatmap is exactly 0; channel k is
        joint k's unnormalised Gaussian (peak 1, sigma 0.5 cells) on its 4x4 window.
    """
    h, w = grid
    maps = np.zeros((len(points), h, w), dtype=np.float32)
    for k, (x, y) in enumerate(np.asarray(points, dtype=np.float64)):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        wx, wy = _gaussian_window(x, w), _gaussian_window(y, h)
        if wx is None or wy is None:
            continue
        maps[k, wy[0], wx[0]] = _KERNEL[wy[1], wx[1]]  # (4, 4) kernel, rows = y
    background = (maps == 0).all(axis=0, keepdims=True).astype(np.float32)
    return torch.from_numpy(np.concatenate([background, maps], axis=0))


def decode_keypoints(labels: torch.Tensor, topk: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k soft-argmax of each propagated joint heatmap (background channel 0 dropped).

    Args:
        labels: (K+1, h, w) or (T, K+1, h, w) soft labels.
        topk: cells per joint (the reference: 5).

    Returns:
        xy: (..., K, 2) float32 (x, y) in grid cells, (-1, -1) where the heatmap is all zero;
        visible: (..., K) bool.
    """
    maps = labels[..., 1:, :, :].float()
    w = maps.shape[-1]
    values, index = maps.flatten(-2).topk(topk, dim=-1)  # (..., K, topk)
    total = values.sum(dim=-1, keepdim=True)
    weights = values / total.clamp(min=torch.finfo(torch.float32).tiny)
    x = (weights * (index % w).float()).sum(-1)
    y = (weights * torch.div(index, w, rounding_mode="floor").float()).sum(-1)
    visible = total[..., 0] > 0
    xy = torch.stack([x, y], dim=-1)
    xy = torch.where(visible[..., None], xy, torch.full_like(xy, -1.0))
    return xy, visible
