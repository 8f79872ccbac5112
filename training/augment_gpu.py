"""Batched augmentation on the training device: nvJPEG decode, crop-resize and colour ops
(docs/training-recipe.md §3.3–§3.4).

The same `CropPlan` parameters as the CPU path (`training.augment`), applied to whole batches:

* decode: `torchvision.io.decode_jpeg(list, device="cuda")` (nvJPEG); on CPU, libjpeg-turbo.
* crop + resize: PIL's antialiased bicubic (a = -0.5, support 2 x scale, weights normalised inside
  the crop box) written as two dense resampling matrices per crop, applied with batched matmuls
  (horizontal pass, rounded and clipped to 8 bit as PIL's intermediate image, then vertical);
  the local crops' flip is a reversal of the matrix rows.
* colour: brightness / contrast / saturation as PIL's `Image.blend` (float32, truncated to 8 bit),
  contrast's grey mean rounded as ImageEnhance does, hue through PIL's 8-bit HSV, grey with PIL's
  integer luma, 9x9 Gaussian blur with reflect padding (torchvision's kernel, rounded),
  solarize at 128. Every op ends on the 8-bit grid, as PIL images do.

Differences from the PIL path are rounding only (measured in tests/test_training_augment.py);
nvJPEG's IDCT may also differ from libjpeg's by a level or two.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tcore.precision import exact_fp32
from training.augment import BLUR_KERNEL, SOLARIZE_THRESHOLD, normalize
from training.batch import Batch, EncodedBatch

__all__ = ["resample_matrix", "resize_crops", "photometric", "decode_frames", "render_batch"]


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """PIL's bicubic kernel (a = -0.5)."""
    a = -0.5
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                    flip: torch.Tensor | None = None) -> torch.Tensor:
    """Dense PIL-bicubic resampling of the pixel range [start, start + length) to `out_size` pixels.

    Args:
        start: (n,) int crop offsets along the axis.
        length: (n,) int crop lengths.
        in_size: the (padded) input length along the axis.
        out_size: output length.
        flip: optional (n,) bool, reverse the output order.

    Returns:
        (n, out_size, in_size) float32; row o holds the weights of output pixel o.
    """
    device = start.device
    length64 = length.double()[:, None, None]
    scale = length64 / out_size                                      # (n, 1, 1)
    fscale = scale.clamp(min=1.0)
    support = 2.0 * fscale
    o = torch.arange(out_size, device=device, dtype=torch.float64)[None, :, None]
    center = (o + 0.5) * scale                                       # (n, out, 1), crop coordinates, float64
    lo = torch.trunc(center - support + 0.5).clamp(min=0).float()   # PIL's window [lo, hi), integers
    hi = torch.minimum(torch.trunc(center + support + 0.5), length64).float()
    whole = torch.floor(center)                                      # center = whole + frac, exactly
    offset = (0.5 - (center - whole)).float()                        # (n, out, 1)
    x = torch.arange(in_size, device=device, dtype=torch.float32)[None, None, :] - start.float()[:, None, None]
    # (x - center + 0.5) / fscale, with the large parts cancelled exactly in float32: (n, out, in)
    w = _bicubic(((x - whole.float()) + offset) / fscale.float()) * ((x >= lo) & (x < hi))
    w = w / w.sum(dim=2, keepdim=True)
    if flip is not None:
        w = torch.where(flip[:, None, None], w.flip(1), w)
    return w


def _round8(x: torch.Tensor) -> torch.Tensor:
    """PIL's 8-bit result of a resampling pass: round half up, clip to [0, 255]."""
    return torch.floor(x + 0.5).clamp_(0, 255)


def resize_crops(frames: torch.Tensor, boxes: torch.Tensor, size: int,
                 flips: torch.Tensor | None = None) -> torch.Tensor:
    """Crop and resize k boxes per frame, as PIL `crop(box).resize((size, size), BICUBIC)`.

    Args:
        frames: (F, 3, H, W) float in [0, 255] (zero padding beyond each frame is ignored).
        boxes: (F, k, 4) int (top, left, height, width).
        size: output side S.
        flips: optional (F, k) bool horizontal flips.

    Returns:
        (F, k, 3, S, S) float on the 8-bit grid.
    """
    f, _, h, w = frames.shape
    k = boxes.shape[1]
    flat = boxes.reshape(-1, 4)
    wx = resample_matrix(flat[:, 1], flat[:, 3], w, size, None if flips is None else flips.reshape(-1))
    wy = resample_matrix(flat[:, 0], flat[:, 2], h, size)
    with exact_fp32(frames.device):  # plain fp32 (no TF32, no autocast): PIL's 8-bit grid needs it
        rows = frames.reshape(f, 3 * h, w) @ wx.reshape(f, k * size, w).transpose(1, 2)  # (F, 3H, k*S)
        rows = _round8(rows).reshape(f, 3, h, k, size).permute(0, 3, 2, 1, 4)           # (F, k, H, 3, S)
        out = wy.reshape(f * k, size, h) @ rows.reshape(f * k, h, 3 * size)             # (F*k, S, 3*S)
    return _round8(out).reshape(f, k, size, 3, size).permute(0, 1, 3, 2, 4)             # (F, k, 3, S, S)


# ------------------------------------------------------------------------------ colour ops

def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Image.blend on 8-bit images: float32 interpolation, truncated, clipped."""
    return torch.trunc(degenerate + factor * (image - degenerate)).clamp_(0, 255)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL convert("L"): (19595 R + 38470 G + 7471 B + 2^15) >> 16, exact in float32. (n,3,H,W) -> (n,1,H,W)."""
    r, g, b = x.unbind(1)
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536).unsqueeze(1)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, f)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = torch.floor(_luma(x).double().mean(dim=(1, 2, 3), keepdim=True) + 0.5).float()  # (n, 1, 1, 1)
    return _blend(mean.expand_as(x), x, f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(_luma(x).expand_as(x), x, f)


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Round float64 values to float32 and back: a C `float` assignment inside double maths."""
    return x.float().double()


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's PIL hue shift: RGB -> 8-bit HSV, H += int(255 f) mod 256, HSV -> RGB.

    PIL's conversions keep `float` variables but compute with double literals, so the maths runs
    in float64 here with float32 rounding at each of its assignments (exact on the 8-bit grid).
    """
    xd = x.double()
    r, g, b = xd.unbind(1)
    maxc, minc = xd.amax(dim=1), xd.amin(dim=1)
    gray = maxc == minc
    cr = torch.where(gray, torch.ones_like(maxc), maxc - minc)
    s = _f32(cr.float() / maxc.clamp(min=1).float())
    rc, gc, bc = ((maxc - c).float() / cr.float() for c in (r, g, b))
    h = torch.where(r == maxc, _f32(bc - gc), torch.where(g == maxc, _f32(2.0 + rc.double() - bc.double()),
                                                          _f32(4.0 + gc.double() - rc.double())))
    h = _f32(torch.fmod(h / 6.0 + 1.0, 1.0))
    hu = torch.where(gray, torch.zeros_like(h), torch.trunc(h * 255.0).clamp(0, 255))
    su = torch.where(gray, torch.zeros_like(h), torch.trunc(s * 255.0).clamp(0, 255))
    shift = torch.remainder(torch.trunc(f.double().reshape(-1, 1, 1) * 255.0), 256.0)
    hu = torch.remainder(hu + shift, 256.0)
    i = torch.floor(hu * 6.0 / 255.0)
    frac = (hu * 6.0 / 255.0 - i).float()
    fs = (su / 255.0).float()
    v = maxc
    p = torch.floor(v * (1.0 - fs.double()) + 0.5).clamp(0, 255)
    q = torch.floor(v * (1.0 - (fs * frac).double()) + 0.5).clamp(0, 255)
    t = torch.floor(v * (1.0 - fs.double() * (1.0 - frac.double())) + 0.5).clamp(0, 255)
    sector = torch.remainder(i, 6).long()
    table = torch.stack([  # (6 sectors, 3 channels, n, H, W)
        torch.stack([v, t, p]), torch.stack([q, v, p]), torch.stack([p, v, t]),
        torch.stack([p, q, v]), torch.stack([t, p, v]), torch.stack([v, p, q])])
    rgb = table.gather(0, sector[None, None].expand(1, 3, *sector.shape)).squeeze(0)  # (3, n, H, W)
    rgb = torch.where((su == 0).unsqueeze(0), v.unsqueeze(0).expand_as(rgb), rgb)
    return rgb.permute(1, 0, 2, 3).to(x.dtype)  # (n, 3, H, W)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """torchvision's 9x9 Gaussian blur (reflect padding), one sigma per image, rounded half to even."""
    n, c, h, w = x.shape
    half = (BLUR_KERNEL - 1) * 0.5
    t = torch.linspace(-half, half, BLUR_KERNEL, device=x.device)
    kernel = torch.exp(-0.5 * (t[None] / sigma[:, None].float()) ** 2)  # (n, 9)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, 9)
    pad = BLUR_KERNEL // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * c)  # along W
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * c)  # along H
    return torch.round(y).reshape(n, c, h, w)


def photometric(x: torch.Tensor, photo: dict[str, torch.Tensor]) -> torch.Tensor:
    """Colour jitter (per-image order) -> grey -> blur -> solarize, per image's parameters.

    Args:
        x: (n, 3, S, S) float on the 8-bit grid, on any device.
        photo: "jitter" (n,) bool, "order" (n, 4), "factors" (n, 4), "gray", "blur" (n,) bool,
            "sigma" (n,), "solarize" (n,) bool, as CPU tensors: the selections are made on the CPU,
            so the device never waits for the host.

    Returns:
        (n, 3, S, S) float on the 8-bit grid.
    """
    device = x.device
    x = x.clone()
    factors = photo["factors"].float()

    def rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sel = torch.nonzero(mask).flatten()  # CPU
        return sel, sel.to(device, non_blocking=True)

    for position in range(4):
        for op in range(4):
            sel, idx = rows(photo["jitter"] & (photo["order"][:, position] == op))
            if sel.numel():
                f = factors[sel, op].to(device, non_blocking=True)
                x[idx] = _JITTER_OPS[op](x[idx], f.view(-1, 1, 1, 1) if op < 3 else f)
    sel, idx = rows(photo["gray"])
    if sel.numel():
        x[idx] = _luma(x[idx]).expand(-1, 3, -1, -1)
    sel, idx = rows(photo["blur"])
    if sel.numel():
        x[idx] = _gaussian_blur(x[idx], photo["sigma"][sel].to(device, non_blocking=True))
    sel, idx = rows(photo["solarize"])
    if sel.numel():
        x[idx] = torch.where(x[idx] >= SOLARIZE_THRESHOLD, 255 - x[idx], x[idx])
    return x


# ------------------------------------------------------------------------------ batches

def decode_frames(encoded: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Decode JPEGs (nvJPEG on CUDA) into one zero-padded float batch.

    Returns:
        (F, 3, Hmax, Wmax) float in [0, 255].
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    else:
        images = [decode_jpeg(e, mode=ImageReadMode.RGB) for e in encoded]
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    out = torch.zeros(len(images), 3, h, w, device=device)
    for k, image in enumerate(images):
        out[k, :, :image.shape[1], :image.shape[2]] = image
    return out


def _on_cpu(photo: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in photo.items()}


def _select(photo: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[rows] for k, v in photo.items()}


def render_batch(batch: EncodedBatch, device: torch.device, global_size: int, local_size: int,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False) -> Batch:
    """Turn a `ClipBatchDataset` item made for GPU augmentation into the model's `Batch`.

    Returns:
        The `Batch` on `device`: "globals" (2b, 3, G, G), "locals" (L*b, 3, l, l), "past"/"future"
        (n, 3, G, G) normalised to `dtype`, and the mask tensors (the layout of the CPU path).
    """
    boxes = batch.current_boxes.to(device, non_blocking=True)          # (b, 2+L, 4)
    flips = batch.current_flips.to(device, non_blocking=True)          # (b, 2+L)
    b, k = flips.shape
    current = decode_frames(batch.current_bytes, device)
    glob = resize_crops(current, boxes[:, :2], global_size).transpose(0, 1).reshape(2 * b, 3, global_size, global_size)
    loc = resize_crops(current, boxes[:, 2:], local_size, flips[:, 2:]).transpose(0, 1)
    loc = loc.reshape((k - 2) * b, 3, local_size, local_size)  # crop-major
    photo = _on_cpu(batch.current_photo)  # rows: sample-major (j, crop)
    crop_major = torch.arange(b * k).view(b, k).t()  # (k, b): row of (crop i, sample j)
    glob = photometric(glob, _select(photo, crop_major[:2].reshape(-1)))
    loc = photometric(loc, _select(photo, crop_major[2:].reshape(-1)))
    glob, loc = normalize(glob, dtype, channels_last), normalize(loc, dtype, channels_last)
    masks = {name: getattr(batch, name).to(device, non_blocking=True)
             for name in ("masks", "aux_rows", "mask_index", "aux_mask_index", "mask_weight")}
    views = {}
    if batch.aux_rows.shape[0]:
        aux = decode_frames(batch.aux_bytes, device)
        aux_boxes = batch.aux_boxes.to(device, non_blocking=True)[:, None]  # (m, 1, 4): one box per frame
        aux = resize_crops(aux, aux_boxes, global_size)[:, 0]              # (m, 3, G, G)
        for name, frame, aux_photo in (("past", batch.past_frame, batch.past_photo),
                                       ("future", batch.future_frame, batch.future_photo)):
            crops = aux[frame.to(device, non_blocking=True)]
            views[name] = normalize(photometric(crops, _on_cpu(aux_photo)), dtype, channels_last)
    else:
        empty = torch.empty(0, 3, global_size, global_size, device=device, dtype=dtype)
        views["past"], views["future"] = empty, empty
    return Batch(globals=glob, locals=loc, **views, **masks)
