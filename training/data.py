"""The batch stream (docs/training-recipe.md §2; augmentation §3): which video, frames, crops and
masks each micro-batch holds. The videos (frame folders, manifests) and sandwich sampling are in
`training.videos`.

The sample stream is global and the same for any number of GPUs: position q (0, 1, 2, ...) is
video `perm_p[q % N]` with `p = q // N` and `perm_p` a permutation seeded by (seed, p). Step t
uses positions [t * G, (t + 1) * G) for a global batch G, split into micro-batches of
`batch_size_per_gpu` over ranks and accumulation steps. Every random choice of a sample is a
function of (seed, q), the masks of a micro-batch a function of (seed, micro-batch index), so
DataLoader workers hold no state worth saving and a resumed run sees exactly the same batches.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tcore.errors import InvalidInputError, MissingFileError
from training.augment import Photo, apply_plan_pil, aux_plan, center_box, draw_aux_photo, draw_current_plan
from training.batch import Batch, EncodedBatch
from training.config import AugmentConfig, Config, DataConfig, MaskConfig
from training.masking import batch_masks, mask_indices
from training.videos import FRAME_EXTENSIONS, list_frames, sample_frame_indices

__all__ = ["SampleStream", "ClipBatchDataset", "StepSampler", "build_loader", "to_device_batch", "mask_rng",
           "sample_rng", "Batch", "EncodedBatch"]

_STREAM_PERM, _STREAM_SAMPLE, _STREAM_MASK = 1, 2, 3  # independent random streams per purpose


class SampleStream:
    """Position q in the global sample stream -> video index (a fresh permutation per pass)."""

    def __init__(self, num_videos: int, seed: int) -> None:
        self.num_videos = num_videos
        self.seed = seed
        self._pass = -1
        self._perm = np.empty(0, dtype=np.int64)

    def video(self, position: int) -> int:
        p, i = divmod(position, self.num_videos)
        if p != self._pass:
            self._perm = np.random.default_rng([self.seed, _STREAM_PERM, p]).permutation(self.num_videos)
            self._pass = p
        return int(self._perm[i])


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The random source of the sample at stream position `position`."""
    return np.random.default_rng([seed, _STREAM_SAMPLE, position])


def mask_rng(seed: int, micro_batch: int) -> np.random.Generator:
    """The random source of the masks of global micro-batch `micro_batch`."""
    return np.random.default_rng([seed, _STREAM_MASK, micro_batch])


# ------------------------------------------------------------------------------ the batches

def _stack_photos(photos: list[Photo]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.concatenate([getattr(p, k) for p in photos])) for k in Photo.__dataclass_fields__}


def _row(photo: Photo, i: int) -> Photo:
    return Photo(**{k: getattr(photo, k)[i:i + 1] for k in Photo.__dataclass_fields__})


class ClipBatchDataset(Dataset):
    """Item g = global micro-batch g, fully built (crops, masks), for a DataLoader with batch_size=None.

    With CPU augmentation (`aug.device == "cpu"`) an item is a `training.batch.Batch` of uint8
    crops rendered with PIL in the worker; with GPU augmentation an `EncodedBatch` (JPEG bytes and
    crop plans, rendered on the device). Both carry the same masks and mask index arrays.

    Args:
        cfg: the run's config.
        root: frames root.
        videos: frame folders relative to root (the manifest).
        batch_size: b, samples per micro-batch.
    """

    def __init__(self, cfg: Config, root: str | Path, videos: list[str], batch_size: int) -> None:
        self.data: DataConfig = cfg.data
        self.aug: AugmentConfig = cfg.augment
        self.mask: MaskConfig = cfg.mask
        self.seed = cfg.train.seed
        self.root = Path(root)
        self.videos = videos
        self.batch_size = batch_size
        grid = cfg.augment.global_size // cfg.model.patch_size
        self.grid = (grid, grid)
        self.stream = SampleStream(len(videos), cfg.train.seed)

    def __len__(self) -> int:  # the stream is unbounded; the sampler decides what is read
        return 2 ** 62

    def _frame_paths(self, position: int) -> tuple[list[Path], np.random.Generator]:
        """(past, current, future) frame files of the sample at `position`, and its random source."""
        folder = self.root / self.videos[self.stream.video(position)]
        names = list_frames(folder)
        if not names:
            raise MissingFileError(f"{folder}: no frame images ({', '.join(FRAME_EXTENSIONS)}); find such folders "
                                   f"before a run with: python -m training.prepare check {self.root}")
        rng = sample_rng(self.seed, position)
        d = self.data
        idx = sample_frame_indices(len(names), rng, d.current_range, d.past_offset_range, d.future_offset_range)
        return [folder / names[i] for i in idx], rng

    def __getitem__(self, g: int) -> Batch | EncodedBatch:
        m = self.mask
        masks = batch_masks(2 * self.batch_size, self.grid, mask_rng(self.seed, g), m.probability,
                            m.ratio_min_max, m.min_num_patches, m.min_aspect)
        index = mask_indices(masks)
        fields = {"masks": torch.from_numpy(masks), **{k: torch.from_numpy(v) for k, v in index.items()}}
        if self.aug.device == "gpu":
            return EncodedBatch(**fields, **self._encoded_crops(g, index["aux_rows"]))
        return Batch(**fields, **self._rendered_crops(g, index["aux_rows"]))

    def _rendered_crops(self, g: int, aux_rows: np.ndarray) -> dict[str, torch.Tensor]:
        """uint8 crops rendered with PIL in this worker: `Batch`'s crop fields."""
        b = self.batch_size
        n_local = self.aug.n_local_crops
        globals_ = [[None] * b for _ in range(2)]
        locals_ = [[None] * b for _ in range(n_local)]
        aux: dict[str, dict[int, torch.Tensor]] = {"past": {}, "future": {}}
        for j in range(b):
            paths, rng = self._frame_paths(g * b + j)
            current = _open_rgb(paths[1])
            plan = draw_current_plan(rng, current.height, current.width, self.aug)
            crops = apply_plan_pil(current, plan)
            for i in range(2):
                globals_[i][j] = crops[i]
            for i in range(n_local):
                locals_[i][j] = crops[2 + i]
            slots = [int(r) // b for r in aux_rows if int(r) % b == j]
            for name, path in (("past", paths[0]), ("future", paths[2])):
                photo = draw_aux_photo(rng, self.aug)  # drawn whether or not it is rendered
                if slots:
                    image = current if path == paths[1] else _open_rgb(path)
                    plan_aux = aux_plan(image.height, image.width, photo, self.aug)
                    for slot, crop in zip(slots, apply_plan_pil(image, plan_aux, slots)):
                        aux[name][slot * b + j] = crop
        empty = torch.empty(0, 3, self.aug.global_size, self.aug.global_size, dtype=torch.uint8)
        return {
            "globals": torch.stack([c for crops in globals_ for c in crops]),  # (2b, 3, G, G)
            "locals": torch.stack([c for crops in locals_ for c in crops]),    # (L*b, 3, l, l)
            "past": torch.stack([aux["past"][int(r)] for r in aux_rows]) if len(aux_rows) else empty,
            "future": torch.stack([aux["future"][int(r)] for r in aux_rows]) if len(aux_rows) else empty,
        }

    def _encoded_crops(self, g: int, aux_rows: np.ndarray) -> dict[str, object]:
        """JPEG bytes + plans (decoding happens on the device): `EncodedBatch`'s crop fields."""
        b = self.batch_size
        current_bytes, boxes, flips, photos = [], [], [], []
        aux_bytes: list[torch.Tensor] = []
        aux_boxes: list[tuple[int, int, int, int]] = []
        aux_frame: dict[tuple[str, int], int] = {}
        aux_photos: dict[tuple[str, int], Photo] = {}
        for j in range(b):
            paths, rng = self._frame_paths(g * b + j)
            data, (width, height) = _read_encoded(paths[1])
            plan = draw_current_plan(rng, height, width, self.aug)
            current_bytes.append(data)
            boxes.append(plan.boxes)
            flips.append(plan.flips)
            photos.append(plan.photo)
            need = any(int(r) % b == j for r in aux_rows)
            for name, path in (("past", paths[0]), ("future", paths[2])):
                photo = draw_aux_photo(rng, self.aug)
                if need:
                    data, (w, h) = (current_bytes[-1], (width, height)) if path == paths[1] else _read_encoded(path)
                    aux_frame[(name, j)] = len(aux_bytes)
                    aux_bytes.append(data)
                    aux_boxes.append(center_box(h, w))
                    aux_photos[(name, j)] = photo
        rows = [int(r) for r in aux_rows]
        past_photo = [_row(aux_photos[("past", r % b)], r // b) for r in rows]
        future_photo = [_row(aux_photos[("future", r % b)], r // b) for r in rows]
        return {
            "current_bytes": current_bytes,
            "current_boxes": torch.from_numpy(np.stack(boxes)),  # (b, 2+L, 4)
            "current_flips": torch.from_numpy(np.stack(flips)),  # (b, 2+L)
            "current_photo": _stack_photos(photos),
            "aux_bytes": aux_bytes,
            "aux_boxes": torch.tensor(aux_boxes, dtype=torch.int64).reshape(-1, 4),  # (m, 4)
            "past_frame": torch.tensor([aux_frame[("past", r % b)] for r in rows], dtype=torch.int64),
            "future_frame": torch.tensor([aux_frame[("future", r % b)] for r in rows], dtype=torch.int64),
            "past_photo": _stack_photos(past_photo),
            "future_photo": _stack_photos(future_photo),
        }


def _open_rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise InvalidInputError(f"{path}: cannot read this frame ({err}); find such frames before a run with: "
                                "python -m training.prepare check FRAMES") from err


def _read_encoded(path: Path) -> tuple[torch.Tensor, tuple[int, int]]:
    """File bytes as a uint8 tensor and the (width, height) read from the header."""
    from PIL import Image

    data = path.read_bytes()
    if not data.startswith(b"\xff\xd8"):
        raise InvalidInputError(f"{path}: augment.device=gpu decodes JPEG frames only (nvJPEG); "
                                "use augment.device=cpu for other formats")
    with Image.open(io.BytesIO(data)) as image:
        size = image.size
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), size


class StepSampler(Sampler[int]):
    """This rank's global micro-batch indices, from `start_step` to `total_steps`.

    Micro-batch index of (step t, accumulation a, rank r) = (t * accum + a) * world + r, so the
    samples of a step do not depend on how the global batch is split.
    """

    def __init__(self, start_step: int, total_steps: int, accum: int, rank: int, world_size: int) -> None:
        self.start_step, self.total_steps = start_step, total_steps
        self.accum, self.rank, self.world_size = accum, rank, world_size

    def __iter__(self) -> Iterator[int]:
        for t in range(self.start_step, self.total_steps):
            for a in range(self.accum):
                yield (t * self.accum + a) * self.world_size + self.rank

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.accum


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers run PIL; one torch thread each avoids oversubscription


def build_loader(dataset: ClipBatchDataset, sampler: StepSampler, cfg: DataConfig, pin_memory: bool
                 ) -> DataLoader:
    """The DataLoader of the loop: one item = one finished micro-batch (batch_size=None)."""
    workers = cfg.num_workers
    return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers,
                      pin_memory=cfg.pin_memory and pin_memory,
                      persistent_workers=cfg.persistent_workers and workers > 0,
                      prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
                      worker_init_fn=_worker_init if workers > 0 else None)


def to_device_batch(item: Batch | EncodedBatch, device: torch.device, aug: AugmentConfig,
                    channels_last: bool = False) -> Batch:
    """A loader item as the model's `Batch` on `device`: ImageNet-normalised float crops, the masks.

    A `Batch` of uint8 crops (CPU augmentation) is copied and normalised; an `EncodedBatch` (GPU
    augmentation) is decoded and rendered on the device.
    """
    if isinstance(item, EncodedBatch):
        from training.augment_gpu import render_batch

        return render_batch(item, device, aug.global_size, aug.local_size, channels_last=channels_last)
    return item.to(device).normalized(channels_last=channels_last)
