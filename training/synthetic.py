"""Synthetic frame folders and videos for tests and benchmarks (no dataset needed).

Frames are smooth random colour fields (low-resolution noise upsampled bilinearly), so JPEG sizes
and decode costs resemble natural frames more than white noise does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["synthetic_frame", "make_frame_folders", "make_video"]


def synthetic_frame(rng: np.random.Generator, height: int, width: int, noise: float = 0.0) -> np.ndarray:
    """(H, W, 3) uint8 smooth random image, plus Gaussian texture of std `noise` (grey levels)."""
    from PIL import Image

    small = (rng.random((max(2, height // 16), max(2, width // 16), 3)) * 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))
    if noise:
        image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
    return image


def make_frame_folders(root: str | Path, frame_counts: list[int], size: tuple[int, int] = (48, 64),
                       layout: str = "kinetics", seed: int = 0, quality: int = 90, noise: float = 0.0) -> list[Path]:
    """Write one JPEG frame folder per entry of `frame_counts`.

    Args:
        root: frames root.
        frame_counts: frames of each video.
        size: (H, W) of the frames.
        layout: "kinetics" (`root/train/class<i%3>/video<i>/00000.jpg`) or "folders" (`root/video<i>/`).
        noise: texture std in grey levels (bigger, more natural JPEG files; see `synthetic_frame`).

    Returns:
        The video folders.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    folders = []
    for i, count in enumerate(frame_counts):
        folder = Path(root) / (f"train/class{i % 3}/video{i:04d}" if layout == "kinetics" else f"video{i:04d}")
        folder.mkdir(parents=True, exist_ok=True)
        for t in range(count):
            Image.fromarray(synthetic_frame(rng, *size, noise=noise)).save(folder / f"{t:05d}.jpg", quality=quality)
        folders.append(folder)
    return folders


def make_video(path: str | Path, num_frames: int = 30, fps: int = 10, size: tuple[int, int] = (48, 64)) -> Path:
    """Encode a short MPEG-4 video with PyAV whose frame t has brightness 8 t (mod 256)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(num_frames):
            frame = np.full((h, w, 3), t * 8 % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
