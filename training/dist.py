"""Process-group setup for torchrun (or a single plain process) and the tensor collectives of training.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them the run is
one process and no process group is created. NCCL on CUDA, gloo on CPU. Where a process sits in
the job (`DistInfo`) and the object collectives are tcore's (`tcore.distributed`, shared with the
evaluation); this module adds what only training needs.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from tcore.distributed import DistInfo, barrier, broadcast_object, torchrun_env

__all__ = ["DistInfo", "setup_distributed", "cleanup_distributed", "all_reduce_mean", "barrier", "broadcast_object"]


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun job (if any) and pick this process's device.

    Args:
        device: "auto" (cuda when available), "cuda" or "cpu".

    Returns:
        The frozen DistInfo, with its device.

    Raises:
        RuntimeError: device="cuda" without a visible GPU, or fewer GPUs than local processes.
    """
    rank, local_rank, world = torchrun_env()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                               "use --nproc-per-node <= the number of GPUs")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if use_cuda else None)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place mean over ranks (no-op in a single process)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(info.world_size)
    return tensor
