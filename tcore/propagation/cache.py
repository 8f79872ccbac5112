"""A video's frame features kept for re-use, within a memory budget, spilled to a file beyond it.

`PropagationSession` encodes each frame once and reads its features back whenever a correction
re-propagates. The features do not depend on the masks, so they never go stale. Up to the budget
they stay in memory (on the device they were computed on); beyond it each frame is written, in
float32 so that it reads back bit for bit, to one temporary file that is deleted when the cache
closes (or is garbage-collected, or the process dies: the file is created in the system's
temporary folder, `TMPDIR`, unless `spill_dir` names another).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO

import numpy as np
import torch

from ..errors import FileAccessError

__all__ = ["FeatureCache"]


class FeatureCache:
    """Frame features by frame index: in memory up to a budget, in a temporary file beyond it.

    Args:
        budget: bytes of memory the features and `reserved` may take together; frames that do not
            fit are spilled.
        spill_dir: folder for the spill file; None: the system's temporary folder.
        reserved: bytes of the budget kept for others (the session's engine states).
    """

    def __init__(self, budget: int, spill_dir: str | os.PathLike | None = None, reserved: int = 0) -> None:
        self.budget = int(budget)
        self.spill_dir = spill_dir
        self.reserved = int(reserved)
        self._memory: dict[int, torch.Tensor] = {}  # frame -> (h, w, D) fp32 on the device
        self._spilled: dict[int, int] = {}  # frame -> byte offset in the spill file
        self._file: IO[bytes] | None = None
        self._shape: tuple[int, ...] | None = None  # (h, w, D) of every frame
        self._device: torch.device | None = None
        self._memory_bytes = 0

    def __contains__(self, t: int) -> bool:
        return t in self._memory or t in self._spilled

    @property
    def nbytes(self) -> int:
        """Bytes of features held in memory."""
        return self._memory_bytes

    @property
    def spilled_nbytes(self) -> int:
        """Bytes of features in the spill file."""
        return len(self._spilled) * self._frame_bytes() if self._spilled else 0

    @property
    def spill_path(self) -> Path | None:
        """The spill file while it exists, else None."""
        return Path(self._file.name) if self._file is not None else None

    def put(self, t: int, features: torch.Tensor) -> None:
        """Keep frame t's (h, w, D) float32 features (in memory if they fit, else in the file)."""
        if self._shape is None:
            self._shape, self._device = tuple(features.shape), features.device
        size = features.numel() * 4
        if self._memory_bytes + size + self.reserved <= self.budget:
            self._memory[t] = features.to(torch.float32, copy=True)  # a copy: no view keeps a batch alive
            self._memory_bytes += size
            return
        data = features.detach().to("cpu", torch.float32).contiguous().numpy()
        spill = self._spill_file()
        offset = len(self._spilled) * size
        try:
            spill.seek(offset)
            spill.write(data.tobytes())
            spill.flush()
        except OSError as err:
            raise FileAccessError(
                f"spill file {spill.name!r}: cannot write {size} bytes of features ({err.strerror}); free disk "
                "space there, or pass a larger cache_bytes= or another spill_dir=") from err
        self._spilled[t] = offset

    def get(self, t: int) -> torch.Tensor:
        """Frame t's (h, w, D) float32 features on the device (read from the file if spilled)."""
        if t in self._memory:
            return self._memory[t]
        assert self._file is not None and self._shape is not None, f"frame {t} was never cached"
        count = int(np.prod(self._shape))
        self._file.seek(self._spilled[t])
        data = np.frombuffer(self._file.read(count * 4), dtype=np.float32, count=count)
        return torch.from_numpy(data.copy()).view(self._shape).to(self._device)

    def close(self) -> None:
        """Drop every frame and delete the spill file."""
        self._memory.clear()
        self._spilled.clear()
        self._memory_bytes = 0
        if self._file is not None:
            self._file.close()  # a NamedTemporaryFile deletes itself on close
            self._file = None

    def _frame_bytes(self) -> int:
        return int(np.prod(self._shape)) * 4 if self._shape is not None else 0

    def _spill_file(self) -> IO[bytes]:
        if self._file is None:
            folder = self.spill_dir if self.spill_dir is not None else tempfile.gettempdir()
            try:
                self._file = tempfile.NamedTemporaryFile(prefix="tcore-features-", suffix=".f32", dir=folder)
            except OSError as err:
                raise FileAccessError(f"spill_dir={str(folder)!r}: cannot create the features' spill file there "
                                      f"({err.strerror}); pass another spill_dir= or a larger cache_bytes=") from err
        return self._file
