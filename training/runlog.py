"""What a training run writes besides checkpoints: log lines, metrics.jsonl and TensorBoard events.

Log lines of the `training` loggers go to stdout on every rank (warnings only but on rank 0) and to
`<output_dir>/log.txt` on rank 0; one JSON record per log step goes to `metrics.jsonl`, and to
TensorBoard when it is installed (rank 0). Loss terms stay on the device between log steps:
`RunLog.write` is the loop's only host sync.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcore.errors import InvalidInputError
from tcore.files import write_text_atomic
from tcore.locks import FolderLock
from training.config import Config
from training.dist import DistInfo, agree, all_reduce_mean

__all__ = ["RunLog"]

_logger = logging.getLogger("training")


class RunLog:
    """The run's outputs besides checkpoints: log lines (stdout, and log.txt on rank 0),
    metrics.jsonl and TensorBoard (rank 0). Loss terms are summed on the device between log steps;
    `write` averages them over ranks (the only sync of the loop) and writes one record."""

    def __init__(self, cfg: Config, info: DistInfo, out_dir: Path, lock: FolderLock | None) -> None:
        self.cfg, self.info, self.out_dir, self.lock = cfg, info, out_dir, lock
        self.handlers = _setup_logging(info, out_dir)
        self.metrics: Any = None
        self.writer: Any = None
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.since = 0, time.perf_counter()

    def start(self, start_step: int, end_step: int, total_steps: int) -> None:
        """Open metrics.jsonl (without the lines of steps after `start_step`) and TensorBoard; the
        ETA counts to `end_step`, the log line shows `total_steps`."""
        self.end_step, self.total_steps = end_step, total_steps
        if self.info.is_main:
            self.metrics = _open_metrics(self.out_dir / "metrics.jsonl", start_step)
            self.writer = _tensorboard(self.cfg, self.out_dir)
        self.steps, self.since = 0, time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + value
        self.steps += 1

    def write(self, done: int, values: dict[str, float]) -> None:
        """Average the terms since the last record over steps and ranks, then log it (rank 0).

        Raises:
            JobStopped: on every rank, for a non-finite loss or when rank 0 cannot write (a lost lock).
        """
        names = list(self.sums)
        means = all_reduce_mean(torch.stack([self.sums[n] for n in names]) / self.steps, self.info).tolist()  # sync
        agree(lambda: self._record(done, values, dict(zip(names, means))), self.info)
        self.sums, self.steps, self.since = {}, 0, time.perf_counter()

    def _record(self, done: int, values: dict[str, float], record: dict[str, Any]) -> None:
        """Check the averaged terms, then log them and append them to metrics.jsonl (rank 0)."""
        if not np.isfinite(record["total"]):
            terms = ", ".join(f"{k} {v:.4g}" for k, v in record.items())
            raise InvalidInputError(f"step {done}: the loss is not finite ({terms}); lower optim.base_lr or check "
                                    "the data (python -m training.prepare check FRAMES)")
        elapsed = time.perf_counter() - self.since
        record.update(step=done, lr=values["lr"], pmm_lr=values["pmm_lr"], wd=values["weight_decay"],
                      momentum=values["momentum"], teacher_temp=values["teacher_temp"],
                      samples_per_s=self.steps * self.cfg.optim.global_batch_size / elapsed)
        if self.info.device.type == "cuda":
            record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.info.device) / 1e9
        if self.info.is_main:
            self.lock.check()
            eta = (self.end_step - done) * elapsed / self.steps
            _logger.info("step %d/%d  loss %.4f  (dino %.4f+%.4f koleo %.4f ibot %.4f/%.4f mse %.5f)  lr %.3g  "
                         "wd %.3g  m %.5f  T %.4f  %.1f samples/s  eta %.1f h", done, self.total_steps,
                         record["total"], record["dino_local"], record["dino_global"], record["koleo"],
                         record["ibot_past"], record["ibot_future"], record["mse"], record["lr"], record["wd"],
                         record["momentum"], record["teacher_temp"], record["samples_per_s"], eta / 3600)
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
            if self.writer is not None:
                for key, value in record.items():
                    if key != "step":
                        self.writer.add_scalar(key, value, done)

    def close(self) -> None:
        for closable in (self.metrics, self.writer):
            if closable is not None:
                closable.close()
        logger = logging.getLogger("training")
        for handler in self.handlers:
            logger.removeHandler(handler)
            handler.close()


def _setup_logging(info: DistInfo, out_dir: Path) -> list[logging.Handler]:
    """Log lines of the `training` loggers to stdout (and log.txt on rank 0); the root logger is left alone."""
    logger = logging.getLogger("training")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO if info.is_main else logging.WARNING)
    logger.propagate = False
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if info.is_main:
        handlers.append(logging.FileHandler(out_dir / "log.txt"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    return handlers


def _open_metrics(path: Path, start_step: int) -> Any:
    """metrics.jsonl for appending, without the lines of steps after `start_step` (a resumed run redoes them)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return open(path, "a")


def _tensorboard(cfg: Config, out_dir: Path) -> Any:
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl and the log still have everything
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))
