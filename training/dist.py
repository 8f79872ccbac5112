"""Process-group setup for torchrun (or a single plain process), the tensor collectives of training,
and `agree`: every rank learns when a step failed on any rank.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them the run is
one process and no process group is created. NCCL on CUDA, gloo on CPU. Where a process sits in
the job (`DistInfo`), the object collectives and `claim_folder` are tcore's (`tcore.distributed`,
shared with the evaluation); this module adds what only training needs.
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from tcore.distributed import DistInfo, all_gather_objects, barrier, broadcast_object, torchrun_env
from tcore.errors import InvalidInputError

__all__ = ["DistInfo", "pick_device", "setup_distributed", "cleanup_distributed", "all_reduce_mean", "barrier",
           "broadcast_object", "agree", "JobStopped", "lost_peer_message"]

# what gloo and NCCL say when the other end of a collective is gone (its process or its node died)
_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused",
              "NCCL communicator was aborted", "remote process exited")

_T = TypeVar("_T")


def pick_device(device: str = "auto") -> torch.device:
    """This process's device, checked before any process group exists (the same answer on every rank).

    Args:
        device: "auto" (cuda when available), "cuda" or "cpu" (`train.device`).

    Raises:
        InvalidInputError: train.device=cuda without a visible GPU, or more processes on this node
            (torchrun's LOCAL_WORLD_SIZE) than visible GPUs.
    """
    local_rank, local_world = torchrun_env()[1], int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InvalidInputError("train.device=cuda: no CUDA device is visible; use train.device=cpu")
    if local_world > torch.cuda.device_count():
        raise InvalidInputError(f"--nproc-per-node={local_world}: only {torch.cuda.device_count()} GPUs are visible "
                                "on this node; start at most one process per GPU")
    return torch.device("cuda", local_rank)


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun job (if any) on `device` (from `pick_device`).

    Returns:
        The frozen DistInfo, with its device.
    """
    rank, local_rank, world = torchrun_env()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place mean over ranks (no-op in a single process)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(info.world_size)
    return tensor


class JobStopped(Exception):
    """Raised on every rank by `agree` when its step failed on some rank.

    Attributes:
        error: the exception to report, on the reporting rank (the lowest rank that failed); None
            on every other rank, which stays silent.
        rank: the reporting rank.
    """

    def __init__(self, error: BaseException | None, rank: int) -> None:
        super().__init__(f"rank {rank} failed: {error!r}" if error is not None else f"rank {rank} failed")
        self.error, self.rank = error, rank


def agree(step: Callable[[], _T], info: DistInfo) -> _T:
    """Run `step` on every rank, then agree on its outcome (a collective).

    When `step` raises on any rank, every rank raises `JobStopped`, which carries the exception of
    the lowest failing rank there (that rank reports it, the others stay silent), so that no rank
    goes on alone and none waits in a collective for one that stopped. `step` itself must not run
    collectives that an exception could make one rank skip. In a single process, a failure is a
    `JobStopped` carrying the exception.

    Returns:
        This rank's result of `step`.
    """
    error: Exception | None = None
    result = None
    try:
        result = step()
    except Exception as err:  # handed to the reporting rank below; nothing is swallowed
        error = err
    failed = all_gather_objects(error is not None, info)
    if any(failed):
        reporter = failed.index(True)
        raise JobStopped(error if info.rank == reporter else None, reporter) from error
    return result


def lost_peer_message(err: BaseException) -> str | None:
    """One line for a collective that failed because another rank or node is gone, else None.

    Not this rank's bug, and not a mistake in the command: another process died (killed, out of
    memory, its node lost) and this rank learnt it in a collective. The line says where to look and
    how to go on; `--debug` still shows the traceback.

    Args:
        err: what a step of the run raised (gloo's and NCCL's errors are RuntimeErrors, some of them
            `torch.distributed.DistError`).
    """
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    network = isinstance(err, getattr(dist, "DistNetworkError", ()))
    from_backend = any(word in text.lower() for word in ("gloo", "nccl", "c10d"))
    if not (network or (isinstance(err, RuntimeError) and from_backend and any(s in text for s in _LOST_PEER))):
        return None
    return (f"lost contact with another rank ({first.strip()[:200]}); another process or node of this job died: "
            "its log says why. Relaunch every node with the same command: the run resumes from the last checkpoint")
