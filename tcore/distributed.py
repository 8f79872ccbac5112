"""Where this process sits in a torchrun job, the collectives that exchange small Python objects, and
`claim_folder`: rank 0 takes a folder's lock and every rank learns the outcome.

One module for both users: the evaluation (`tcore eval` under torchrun shards the videos, then
gathers and broadcasts statuses and the summary over gloo) and the pretraining recipe
(`training/dist.py` adds the process-group setup for NCCL / gloo and the tensor collectives on
top). Both claim their output folder with `claim_folder`. tcore never imports `training`; training
imports this.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them the process is rank 0 of 1, and every
collective here returns at once without touching `torch.distributed`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import FileAccessError
from .locks import FolderLock, FolderLockedError

__all__ = ["DistInfo", "torchrun_env", "broadcast_object", "all_gather_objects", "barrier", "claim_folder"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed).

    Attributes:
        rank: global rank. local_rank: rank on this node (its GPU index). world_size: processes.
        device: the device this process computes on; the object collectives stage through it
            (NCCL needs the rank's GPU). None: the CPU.
        group: the process group of the collectives (e.g. a gloo group beside an NCCL one); None
            for the default group.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    group: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes shared files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from err


def torchrun_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) outside torchrun.

    Raises:
        ValueError: a variable that is not an integer (the message names it).
    """
    return _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1)


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's `value` (picklable) on every rank; `value` itself in a single process."""
    if not info.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=info.group, device=info.device)
    return box[0]


def all_gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """Every rank's `value` (picklable), in rank order; `[value]` in a single process."""
    if not info.distributed:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * info.world_size
    dist.all_gather_object(values, value, group=info.group)
    return values


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing in a single process)."""
    if not info.distributed:
        return
    import torch.distributed as dist

    if info.device is not None and info.device.type == "cuda" and info.group is None:
        dist.barrier(device_ids=[info.local_rank])
    else:
        dist.barrier(group=info.group)


def claim_folder(folder: str | os.PathLike, purpose: str, info: DistInfo, *, name: str) -> FolderLock | None:
    """Rank 0 takes `folder`'s lock (one run per folder, `tcore.locks.FolderLock`) before anything is
    written there; every rank learns the outcome (a collective), so that no rank works alone.

    Args:
        folder: the folder to own (created if missing).
        purpose: what the run does ("training", "evaluation"); a run that finds the folder held is told.
        info: this process's place in the job.
        name: how the user named the folder ("out_dir", "train.output_dir=runs/x"): the error's prefix.

    Returns:
        The held lock on rank 0 (the caller releases it), None on the other ranks.

    Raises:
        FolderLockedError: on every rank, when another live run holds the folder; the message starts
            with `name` and names that run (host, pid, since when) and what to do.
        FileAccessError: on every rank, when the folder or its lock file cannot be made (permissions).
    """
    lock, refusal = None, None
    if info.is_main:
        lock = FolderLock(folder, purpose=purpose)
        try:
            lock.acquire()
        except FolderLockedError as err:
            lock, refusal = None, (FolderLockedError, f"{name}: {err}")
        except OSError as err:
            lock, refusal = None, (FileAccessError, f"{name}: cannot create {lock.path} ({err.strerror or err}); "
                                                    "pick a folder you can write to")
    refusal = broadcast_object(refusal, info)
    if refusal is not None:
        error_type, message = refusal
        raise error_type(message)
    return lock
