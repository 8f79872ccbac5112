"""T-CoRe pretraining with PyTorch DDP (recipe: docs/training-recipe.md, README: training/README.md).

One GPU:
    torchrun --standalone --nproc-per-node=1 training/pretrain.py \
        --config training/configs/vits16_k400.yaml data.root=/data/k400/frames
One node, 4 GPUs (also `torchrun ... -m training.pretrain ...` from the repository root):
    torchrun --standalone --nproc-per-node=4 training/pretrain.py --config training/configs/vits16_k400.yaml \
        data.root=/data/k400/frames train.output_dir=runs/vits16
Several nodes: training/README.md has a SLURM script. CPU (tests): python training/pretrain.py
    --config training/configs/tiny.yaml data.root=... train.device=cpu

Arguments after the config are dotted overrides (`optim.base_lr=0.002`). The global batch stays
`optim.global_batch_size` on any number of GPUs (gradient accumulation), and so does the stream
of samples, so one GPU with accumulation 4 trains on the same batches as 4 GPUs.

One run per output folder: rank 0 holds `<output_dir>/tcore.lock` (tcore._lock.FolderLock) for the
whole run, and a launch into a folder held by a live run stops with an error naming it. Every rank
started by a launcher dies with it (training/lifecycle.py), so no rank outlives a killed torchrun.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`torchrun training/pretrain.py`): make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # a rank dies with its launcher: armed first, before the slow imports below
    from training.lifecycle import die_with_launcher

    die_with_launcher()

import argparse
import contextlib
import json
import logging
import time
from typing import Any, Mapping

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from tcore._lock import FolderLock, FolderLockedError
from training.batch import Batch
from training.checkpoint import FORMAT_VERSION, export_teacher, latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import Config, config_to_dict, load_config
from training.data import (ClipBatchDataset, StepSampler, build_loader, read_manifest, scan_videos, to_device_batch,
                           write_manifest)
from training.dist import (DistInfo, all_reduce_mean, barrier, broadcast_object, cleanup_distributed,
                           setup_distributed)
from training.lifecycle import release_on_sigterm
from training.losses import Centers, LossTerms, compile_loss_kernels, tcore_losses
from training.model import (Student, build_student, build_teacher, compile_models, teacher_pairs, teacher_targets,
                            update_teacher)
from training.optim import apply_schedules, build_optimizer, build_schedules, scaled_lr

__all__ = ["main", "train", "build_training", "forward_backward", "optimizer_step", "micro_seed"]

_logger = logging.getLogger("training")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="T-CoRe pretraining (torchrun + DDP)", prog="training.pretrain")
    parser.add_argument("--config", required=True, help="YAML file, e.g. training/configs/vits16_k400.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.base_lr=0.002")
    return parser.parse_args(argv)


def micro_seed(seed: int, micro_batch: int) -> int:
    """Torch seed of one micro-batch (drop path): a function of (seed, global micro-batch index)."""
    return int(np.random.SeedSequence([seed, 4, micro_batch]).generate_state(1)[0])


def forward_backward(model: torch.nn.Module, teacher: torch.nn.ModuleDict, centers: Centers,
                     batch: Batch | Mapping[str, torch.Tensor], teacher_temp: float, cfg: Config, scale: float,
                     scaler: torch.amp.GradScaler) -> LossTerms:
    """Teacher targets, student forward, losses and backward of one micro-batch.

    Args:
        model: the Student, possibly DDP-wrapped (the caller handles no_sync).
        batch: the micro-batch on the device (`to_device_batch`); a mapping of `Batch`'s fields is
            taken too.
        scale: 1 / accumulation steps (the loss is averaged over micro-batches).
    """
    if not isinstance(batch, Batch):
        batch = Batch(**batch)
    dtype = _DTYPES[cfg.train.precision]
    with torch.autocast(batch.globals.device.type, dtype=dtype, enabled=dtype != torch.float32):
        cls_t, patch_t = teacher_targets(teacher, batch.globals, batch.mask_index, centers, teacher_temp)
        out = model(batch)
    terms = tcore_losses(out, cls_t, patch_t, batch.mask_weight, cfg.loss)  # float32, outside autocast
    scaler.scale(terms.total * scale).backward()
    return terms


def optimizer_step(student: Student, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   clip: float) -> None:
    """Unscale, clip each module's gradient norm separately (backbone, head, PMM), step, zero."""
    scaler.unscale_(optimizer)
    if clip > 0:
        for module in (student.backbone, student.dino_head, student.pmm):
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def build_training(cfg: Config, device: torch.device) -> tuple[Student, torch.nn.ModuleDict, torch.optim.Optimizer,
                                                              torch.amp.GradScaler, Centers]:
    """Precision flags, then student, EMA teacher, AdamW, grad scaler and centres, seeded by train.seed.

    With train.compile the models and loss kernels are compiled in place (state_dict names unchanged).
    """
    torch.backends.cuda.matmul.allow_tf32 = cfg.train.precision != "fp32"  # as the reference; fp32 means fp32
    torch.backends.cudnn.allow_tf32 = cfg.train.precision != "fp32"
    torch.manual_seed(cfg.train.seed)
    student = build_student(cfg.model).to(device)
    teacher = build_teacher(student)
    if cfg.train.channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(student, cfg.optim, cfg.model.depth, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    centers = Centers(cfg.model.head_n_prototypes, cfg.loss.center_momentum, device)
    if cfg.train.compile:
        compile_models(student, teacher)
        compile_loss_kernels()
    return student, teacher, optimizer, scaler, centers


def _videos(cfg: Config, out_dir: Path, info: DistInfo) -> list[str]:
    """The manifest: data.manifest, else the run's own manifest.txt (written once, reused on resume)."""
    if cfg.data.manifest:
        return read_manifest(cfg.data.manifest)
    path = out_dir / "manifest.txt"
    if info.is_main and not path.is_file():
        write_manifest(path, scan_videos(cfg.data.root, cfg.data.layout, cfg.data.split))
    barrier(info)
    return read_manifest(path)


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
        path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")


def _tensorboard(cfg: Config, out_dir: Path, info: DistInfo) -> Any:
    if not (cfg.train.tensorboard and info.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl and the log still have everything
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _claim_output_dir(out_dir: Path, info: DistInfo) -> FolderLock | None:
    """Rank 0 locks `out_dir` (one run per output folder) before anything is written there; every
    rank learns the outcome, so that no rank trains alone.

    Returns:
        The held lock on rank 0 (released on SIGTERM too), None on the other ranks.

    Raises:
        FolderLockedError: on every rank when another live run holds the folder; rank 0 has printed
            the error naming that run.
    """
    lock, refusal = None, None
    if info.is_main:
        lock = FolderLock(out_dir, purpose="training")
        try:
            lock.acquire()
        except FolderLockedError as err:
            refusal = f"train.output_dir={out_dir}: {err}"
            print(f"training.pretrain: error: {refusal}", file=sys.stderr, flush=True)  # before the others exit
            lock = None
    refusal = broadcast_object(refusal, info)
    if refusal is not None:
        raise FolderLockedError(refusal)
    if lock is not None:
        release_on_sigterm(lock)
    return lock


def main(argv: list[str] | None = None) -> int:
    """Run one training job; 1 when the output folder is in use by another run."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    info = setup_distributed(cfg.train.device)
    out_dir = Path(cfg.train.output_dir)
    try:
        lock = _claim_output_dir(out_dir, info)
    except FolderLockedError:
        cleanup_distributed()
        return 1
    try:
        train(cfg, info, out_dir, lock)
    finally:
        if lock is not None:
            lock.release()
    cleanup_distributed()
    return 0


def train(cfg: Config, info: DistInfo, out_dir: Path, lock: FolderLock | None) -> None:
    """The run: data, model, resume, the loop, the export. Rank 0 holds `lock` and checks it
    before each write into `out_dir` (metrics, checkpoints, export)."""
    handlers = _setup_logging(info, out_dir)
    if lock is not None:
        _logger.info("%s: held by this run (heartbeat every %g s)", lock.path, lock.heartbeat_every)
    _logger.info("config:\n%s", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    device = info.device

    # ---- data: the sample stream is global, split into micro-batches over ranks and accumulation
    o = cfg.optim
    per_step = o.batch_size_per_gpu * info.world_size
    if o.global_batch_size % per_step:
        raise ValueError(f"optim.global_batch_size={o.global_batch_size} is not a multiple of "
                         f"optim.batch_size_per_gpu={o.batch_size_per_gpu} x {info.world_size} processes")
    accum = o.global_batch_size // per_step
    videos = _videos(cfg, out_dir, info)
    epoch_length = len(videos) // o.global_batch_size if o.epoch_length == "auto" else o.epoch_length
    if epoch_length < 1:
        raise ValueError(f"optim.epoch_length=auto: {len(videos)} videos give no full global batch of "
                         f"{o.global_batch_size}; lower optim.global_batch_size or set optim.epoch_length")
    total_steps = o.epochs * epoch_length
    schedules = build_schedules(cfg, epoch_length)
    _logger.info("%d videos, %d processes x %d per micro-batch x %d accumulation = global batch %d; "
                 "%d steps (%d epochs of %d), peak lr %.3g", len(videos), info.world_size, o.batch_size_per_gpu,
                 accum, o.global_batch_size, total_steps, o.epochs, epoch_length, scaled_lr(o))

    # ---- model, teacher, optimizer (same seed on every rank; DDP also broadcasts rank 0's weights)
    student, teacher, optimizer, scaler, centers = build_training(cfg, device)
    start_step = 0
    ckpt_dir = out_dir / "checkpoints"
    resume = latest_checkpoint(ckpt_dir) if cfg.train.resume == "auto" else cfg.train.resume or None
    if resume is not None:
        state = load_checkpoint(resume)
        if state["config"]["model"] != config_to_dict(cfg)["model"]:
            raise ValueError(f"{resume}: model config {state['config']['model']} differs from this run's "
                             f"{config_to_dict(cfg)['model']}")
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        centers.load_state_dict(state["centers"])
        start_step = int(state["step"])
        _logger.info("resumed from %s at step %d", resume, start_step)
    model = DDP(student, device_ids=[info.local_rank] if device.type == "cuda" else None,
                gradient_as_bucket_view=True) if info.distributed else student
    t_params, s_params = teacher_pairs(student, teacher)

    end_step = min(total_steps, cfg.train.stop_at_step) if cfg.train.stop_at_step > 0 else total_steps
    dataset = ClipBatchDataset(cfg, cfg.data.root, videos, o.batch_size_per_gpu)
    sampler = StepSampler(start_step, end_step, accum, info.rank, info.world_size)
    batches = iter(build_loader(dataset, sampler, cfg.data, pin_memory=device.type == "cuda"))
    writer = _tensorboard(cfg, out_dir, info)
    metrics_file = _open_metrics(out_dir / "metrics.jsonl", start_step) if info.is_main else None

    def checkpoint(step: int) -> None:
        if info.is_main:
            lock.check()
            state = {"format_version": FORMAT_VERSION, "step": step, "student": student.state_dict(),
                     "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "centers": centers.state_dict(), "config": config_to_dict(cfg),
                     "rng": {"seed": cfg.train.seed, "scheme": "all randomness derives from (seed, sample / "
                                                               "micro-batch index); nothing else to restore"}}
            path = save_checkpoint(ckpt_dir, state, step, cfg.train.keep_last)
            _logger.info("saved %s", path)
        barrier(info)

    # ---- the loop
    log_sums: dict[str, torch.Tensor] = {}
    t_log, steps_logged = time.perf_counter(), 0
    for step in range(start_step, end_step):
        values = schedules.at(step)
        apply_schedules(optimizer, values, o.lr_groups)
        for a in range(accum):
            batch = to_device_batch(next(batches), device, cfg.augment, cfg.train.channels_last)
            torch.manual_seed(micro_seed(cfg.train.seed, (step * accum + a) * info.world_size + info.rank))
            last = a == accum - 1
            with model.no_sync() if info.distributed and not last else contextlib.nullcontext():
                terms = forward_backward(model, teacher, centers, batch, values["teacher_temp"], cfg, 1 / accum,
                                         scaler)
            for name, value in terms.as_dict().items():
                log_sums[name] = log_sums.get(name, 0) + value.detach() / accum
        optimizer_step(student, optimizer, scaler, o.clip_grad)
        update_teacher(t_params, s_params, values["momentum"])
        centers.update(torch.distributed.all_reduce if info.distributed else None)
        steps_logged += 1
        done = step + 1
        save_now = done == end_step or (cfg.train.checkpoint_every > 0 and done % cfg.train.checkpoint_every == 0)
        if done % cfg.train.log_every == 0 or save_now:
            names = list(log_sums)
            means = all_reduce_mean(torch.stack([log_sums[n] for n in names]) / steps_logged, info).tolist()  # sync
            record = dict(zip(names, means))
            if not np.isfinite(record["total"]):
                raise FloatingPointError(f"step {done}: non-finite loss {record}; lower the lr or check the data")
            elapsed = time.perf_counter() - t_log
            record.update(step=done, lr=values["lr"], pmm_lr=values["pmm_lr"], wd=values["weight_decay"],
                          momentum=values["momentum"], teacher_temp=values["teacher_temp"],
                          samples_per_s=steps_logged * o.global_batch_size / elapsed)
            if device.type == "cuda":
                record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            if info.is_main:
                lock.check()
                eta = (end_step - done) * elapsed / steps_logged
                _logger.info("step %d/%d  loss %.4f  (dino %.4f+%.4f koleo %.4f ibot %.4f/%.4f mse %.5f)  lr %.3g  "
                             "wd %.3g  m %.5f  T %.4f  %.1f samples/s  eta %.1f h", done, total_steps, record["total"],
                             record["dino_local"], record["dino_global"], record["koleo"], record["ibot_past"],
                             record["ibot_future"], record["mse"], record["lr"], record["wd"], record["momentum"],
                             record["teacher_temp"], record["samples_per_s"], eta / 3600)
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                if writer is not None:
                    for key, value in record.items():
                        if key != "step":
                            writer.add_scalar(key, value, done)
            log_sums, t_log, steps_logged = {}, time.perf_counter(), 0
        if save_now:
            checkpoint(done)

    if info.is_main and end_step == total_steps and cfg.train.export_at_end:
        lock.check()
        export_teacher(load_checkpoint(latest_checkpoint(ckpt_dir)), out_dir / "export")
    if metrics_file is not None:
        metrics_file.close()
    if writer is not None:
        writer.close()
    for handler in handlers:
        logging.getLogger("training").removeHandler(handler)
        handler.close()


if __name__ == "__main__":
    sys.exit(main())
