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

A user's mistake (a config key or value, the data, a checkpoint, a folder in use) ends the run with
one line, `training: error: <message>`, printed by one rank, and exit code 1 on every rank; a bug
keeps its traceback (`--debug` shows it always). The config is checked before a process group, a
data scan or a model exists; every later step that can fail on some ranks only runs under
`training.dist.agree`, so every rank stops with it and none waits in a collective.

One run per output folder: rank 0 holds `<output_dir>/tcore.lock` (tcore.locks.FolderLock, taken
with tcore.distributed.claim_folder) for the whole run, and a launch into a folder held by a live
run stops with an error naming it. Every rank started by a launcher dies with it
(training/lifecycle.py), so no rank outlives a killed torchrun. A resume takes the newest good
checkpoint and refuses a config that changes the training (training/resume.py).

Reading order: the run's pieces (`TrainState`, `plan_steps`, `build_training`, `resume`, `save`),
one training step (`forward_backward`, `optimizer_step`, `train_step`), the data, then `main` and
`train`, whose loop is the whole run in a dozen lines. Logs and metrics: training/runlog.py; the
micro-batch: training/batch.py.
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
import logging
import signal
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from tcore.distributed import claim_folder, torchrun_env
from tcore.errors import CheckpointError, InvalidInputError, MissingFileError, user_error_message
from tcore.locks import FolderLock
from training.batch import Batch
from training.checkpoint import FORMAT_VERSION, export_teacher, latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import Config, ConfigError, check_world_size, config_to_dict, load_config
from training.data import ClipBatchDataset, StepSampler, build_loader, to_device_batch
from training.dist import DistInfo, JobStopped, agree, barrier, broadcast_object, cleanup_distributed, \
    lost_peer_message, pick_device, setup_distributed
from training.lifecycle import release_on_sigterm
from training.losses import Centers, LossTerms, compile_loss_kernels, tcore_losses
from training.model import Student, build_student, build_teacher, compile_models, teacher_pairs, teacher_targets, \
    update_teacher
from training.optim import apply_schedules, build_optimizer, build_schedules, scaled_lr
from training.resume import choose_checkpoint
from training.runlog import RunLog
from training.videos import read_manifest, scan_videos, write_manifest

__all__ = ["main", "train", "check_launch", "TrainState", "StepPlan", "build_training", "plan_steps", "resume",
           "train_step", "forward_backward", "optimizer_step", "micro_seed", "save"]

PROG = "training"  # errors read `training: error: <message>`
_logger = logging.getLogger("training")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_MEMORY_FIX = "lower optim.batch_size_per_gpu (the global batch stays: gradient accumulation makes up the rest)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="T-CoRe pretraining (torchrun + DDP)", prog=PROG)
    parser.add_argument("--config", required=True, help="YAML file, e.g. training/configs/vits16_k400.yaml")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error, a user's too")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.base_lr=0.002")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------- the run's pieces

@dataclass
class TrainState:
    """Everything a step updates, and a checkpoint holds besides the config and the step.

    Attributes:
        student: backbone + DINO head + PMM (gets the gradients; DDP wraps it, never this field).
        teacher: EMA copy of the backbone and the head (eval mode, no gradients).
        optimizer: AdamW over the student's parameter groups.
        scaler: the gradient scaler (enabled with fp16 only).
        centers: the DINO and iBOT softmax centres.
    """

    student: Student
    teacher: torch.nn.ModuleDict
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    centers: Centers

    def __post_init__(self) -> None:
        self.ema_pairs = teacher_pairs(self.student, self.teacher)  # (teacher, student) parameter lists

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "centers": self.centers.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.centers.load_state_dict(state["centers"])


@dataclass(frozen=True)
class StepPlan:
    """How the global batch and the run are cut: every number here is printed at the start.

    Attributes:
        accum: micro-batches per rank and step (global batch = world x per-GPU batch x accum).
        epoch_length: optimizer steps per epoch. total_steps: epochs x epoch_length (the schedules'
        length). end_step: where this launch stops (train.stop_at_step, else total_steps).
    """

    accum: int
    epoch_length: int
    total_steps: int
    end_step: int


def plan_steps(cfg: Config, info: DistInfo, num_videos: int) -> StepPlan:
    """Gradient accumulation and run length from the config, the world size and the data.

    Raises:
        ConfigError: a global batch that the processes cannot split evenly, or too few videos.
    """
    o = cfg.optim
    check_world_size(cfg, info.world_size)
    per_step = o.batch_size_per_gpu * info.world_size
    epoch_length = num_videos // o.global_batch_size if o.epoch_length == "auto" else o.epoch_length
    if epoch_length < 1:
        raise ConfigError(f"optim.epoch_length=auto: {num_videos} videos give no full global batch of "
                          f"{o.global_batch_size}; lower optim.global_batch_size or set optim.epoch_length")
    total = o.epochs * epoch_length
    end = min(total, cfg.train.stop_at_step) if cfg.train.stop_at_step > 0 else total
    return StepPlan(accum=o.global_batch_size // per_step, epoch_length=epoch_length, total_steps=total, end_step=end)


def build_training(cfg: Config, device: torch.device) -> TrainState:
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
    return TrainState(student, teacher, optimizer, scaler, centers)


def resume(state: TrainState, cfg: Config, ckpt_dir: Path, info: DistInfo) -> int:
    """Load the checkpoint that rank 0 chooses (`training.resume.choose_checkpoint`) into `state` on
    every rank: all ranks resume from the same file, or none does.

    Returns:
        The step to start from: the checkpoint's, or 0.

    Raises:
        JobStopped: on every rank, when the choice or a load failed on any (a broken checkpoint
            alone is renamed and skipped; see training/resume.py).
    """
    chosen = agree(lambda: choose_checkpoint(cfg, ckpt_dir) if info.is_main else None, info)
    path = broadcast_object(None if chosen is None else str(chosen[0]), info)
    if path is None:
        return 0

    def load() -> int:
        saved = chosen[1] if info.is_main else load_checkpoint(path)
        try:
            state.load_state_dict(saved)
        except (RuntimeError, KeyError, ValueError) as err:  # a model change accepted by train.resume_changes
            raise CheckpointError(f"train.resume: {path}: its weights do not fit this run's model "
                                  f"({str(err).strip().splitlines()[0]}); keep the model.* keys of the run") from err
        return int(saved["step"])

    step = agree(load, info)
    _logger.info("resumed from %s at step %d", path, step)
    return step


def save(state: TrainState, cfg: Config, ckpt_dir: Path, step: int, info: DistInfo,
         lock: FolderLock | None) -> None:
    """Rank 0 writes the checkpoint of `step` (atomically, keeping train.keep_last); every rank waits,
    and stops with it when the save failed (a lost lock, a full disk)."""
    def write() -> None:
        if not info.is_main:
            return
        lock.check()
        rng = {"seed": cfg.train.seed,
               "scheme": "all randomness derives from (seed, sample / micro-batch index); nothing else to restore"}
        path = save_checkpoint(ckpt_dir, {"format_version": FORMAT_VERSION, "step": step, **state.state_dict(),
                                          "config": config_to_dict(cfg), "rng": rng}, step, cfg.train.keep_last)
        _logger.info("saved %s", path)

    agree(write, info)


# ------------------------------------------------------------------------------- one training step

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


def train_step(model: torch.nn.Module, state: TrainState, next_batch: Callable[[], Batch], values: dict[str, float],
               step: int, accum: int, cfg: Config, info: DistInfo) -> dict[str, torch.Tensor]:
    """One optimizer step: `accum` micro-batches (gradients synchronised on the last one only), then
    per-module clipping + AdamW, the EMA teacher and the centres.

    Args:
        model: `state.student`, or its DDP wrapper.
        next_batch: the next micro-batch of this rank, on the device.
        values: the schedules at `step` (lr, last_layer_lr, pmm_lr, weight_decay, momentum, teacher_temp).
        step: the global step (seeds each micro-batch's drop path).

    Returns:
        The step's loss terms averaged over its micro-batches: device tensors, no sync.
    """
    apply_schedules(state.optimizer, values, cfg.optim.lr_groups)
    terms: dict[str, torch.Tensor] = {}
    for a in range(accum):
        batch = next_batch()
        torch.manual_seed(micro_seed(cfg.train.seed, (step * accum + a) * info.world_size + info.rank))
        last = a == accum - 1
        with model.no_sync() if info.distributed and not last else contextlib.nullcontext():
            micro = forward_backward(model, state.teacher, state.centers, batch, values["teacher_temp"], cfg,
                                     1 / accum, state.scaler)
        for name, value in micro.as_dict().items():
            terms[name] = terms.get(name, 0) + value.detach() / accum
    optimizer_step(state.student, state.optimizer, state.scaler, cfg.optim.clip_grad)
    update_teacher(*state.ema_pairs, values["momentum"])
    state.centers.update(torch.distributed.all_reduce if info.distributed else None)
    return terms


# ------------------------------------------------------------------------------- data

def _videos(cfg: Config, out_dir: Path, info: DistInfo) -> list[str]:
    """The manifest: data.manifest, else the run's own manifest.txt (written once, reused on resume).
    Rank 0 reads (or scans) it and hands it to every rank."""
    def manifest() -> list[str] | None:
        if not info.is_main:
            return None
        if cfg.data.manifest:
            return read_manifest(cfg.data.manifest)
        path = out_dir / "manifest.txt"
        if not path.is_file():
            write_manifest(path, scan_videos(cfg.data.root, cfg.data.layout, cfg.data.split))
        return read_manifest(path)

    return broadcast_object(agree(manifest, info), info)


def _batches(cfg: Config, info: DistInfo, videos: list[str], plan: StepPlan, start: int) -> Callable[[], Batch]:
    """This rank's micro-batches from step `start` on, each on the device: `next_batch()`."""
    dataset = ClipBatchDataset(cfg, cfg.data.root, videos, cfg.optim.batch_size_per_gpu)
    sampler = StepSampler(start, plan.end_step, plan.accum, info.rank, info.world_size)
    items = iter(build_loader(dataset, sampler, cfg.data, pin_memory=info.device.type == "cuda"))
    return lambda: to_device_batch(next(items), info.device, cfg.augment, cfg.train.channels_last)


# ------------------------------------------------------------------------------- the run

def check_launch(cfg: Config) -> torch.device:
    """What can be checked before a process group, a data scan or a model exists, with the same
    answer on every rank: the split of the global batch over the job's processes, the device, and
    the paths the config names.

    Returns:
        This process's device.

    Raises:
        ConfigError, MissingFileError, InvalidInputError: the message names the key and the value.
    """
    check_world_size(cfg, torchrun_env()[2])
    d = cfg.data
    if not d.root:
        raise ConfigError("data.root is not set: give the frames folder, e.g. data.root=/data/k400/frames "
                          "(python -m training.prepare frames VIDEOS FRAMES makes one)")
    if not Path(d.root).is_dir():
        raise MissingFileError(f"data.root={d.root}: no such folder")
    if d.manifest and not Path(d.manifest).is_file():
        raise MissingFileError(f"data.manifest={d.manifest}: no such file")
    if cfg.train.resume not in ("auto", "") and not Path(cfg.train.resume).is_file():
        raise MissingFileError(f"train.resume={cfg.train.resume}: no such checkpoint file (train.resume=auto takes "
                               "the newest of the run's own)")
    if Path(cfg.train.output_dir).is_file():
        raise InvalidInputError(f"train.output_dir={cfg.train.output_dir}: a file, not a folder")
    return pick_device(cfg.train.device)


def _one_line(err: BaseException) -> str | None:
    """The line for what is not a bug of this rank: a user's mistake, or another rank or node lost."""
    return user_error_message(err, memory_fix=_MEMORY_FIX) or lost_peer_message(err)


def _report(err: BaseException, debug: bool) -> None:
    """Print `training: error: <message>` for a user's mistake or a lost peer, else (or with --debug)
    the traceback."""
    message = _one_line(err)
    if message is None or debug:
        traceback.print_exception(err)
        return
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:  # re-raised from a DataLoader worker
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]  # "...InvalidInputError: <message>"
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one training job.

    Returns:
        0, or 1 after one rank printed `training: error: <message>` (a user's mistake) or a
        traceback. A bug raised on one rank only (outside `agree`) propagates with its traceback.
    """
    args = parse_args(argv)
    info: DistInfo | None = None
    try:
        cfg = load_config(args.config, args.overrides)
        device = check_launch(cfg)
    except Exception as err:  # before the process group: the same error on every rank, rank 0 reports it
        if torchrun_env()[0] == 0:
            _report(err, args.debug)
        return 1
    try:
        info = setup_distributed(device)
        out_dir = Path(cfg.train.output_dir)
        lock = agree(lambda: claim_folder(out_dir, "training", info, name=f"train.output_dir={out_dir}"), info)
        if lock is not None:
            release_on_sigterm(lock)
        try:
            train(cfg, info, out_dir, lock)
        finally:
            if lock is not None:
                lock.release()
    except JobStopped as stopped:  # every rank: one reports, the others wait until it has
        if stopped.error is not None:
            _report(stopped.error, args.debug)
        barrier(info)
        return 1
    except Exception as err:
        if _one_line(err) is None or args.debug:
            raise
        _report(err, debug=False)  # this rank's own mistake (e.g. a frame its loader could not read), a lost peer
        return 1
    finally:
        cleanup_distributed()
    return 0


def train(cfg: Config, info: DistInfo, out_dir: Path, lock: FolderLock | None) -> None:
    """The run: data, model, resume, the loop, the export. Rank 0 holds `lock` and checks it
    before each write into `out_dir` (metrics, checkpoints, export).

    Raises:
        JobStopped: on every rank, when a step run under `agree` (the manifest, the plan, the
            resume, a log step, a save) failed on any rank; it carries the error on the rank that
            reports it.
    """
    log = RunLog(cfg, info, out_dir, lock)
    try:
        if lock is not None:
            _logger.info("%s: held by this run (heartbeat every %g s)", lock.path, lock.heartbeat_every)
        _logger.info("config:\n%s", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        videos = _videos(cfg, out_dir, info)
        plan = agree(lambda: plan_steps(cfg, info, len(videos)), info)
        _logger.info("%d videos, %d processes x %d per micro-batch x %d accumulation = global batch %d; "
                     "%d steps (%d epochs of %d), peak lr %.3g", len(videos), info.world_size,
                     cfg.optim.batch_size_per_gpu, plan.accum, cfg.optim.global_batch_size, plan.total_steps,
                     cfg.optim.epochs, plan.epoch_length, scaled_lr(cfg.optim))
        state = build_training(cfg, info.device)  # same seed on every rank; DDP also broadcasts rank 0's weights
        ckpt_dir = out_dir / "checkpoints"
        start = resume(state, cfg, ckpt_dir, info)
        model = DDP(state.student, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                    gradient_as_bucket_view=True) if info.distributed else state.student
        schedules = build_schedules(cfg, plan.epoch_length)
        next_batch = _batches(cfg, info, videos, plan, start)
        log.start(start, plan.end_step, plan.total_steps)
        for step in range(start, plan.end_step):
            values = schedules.at(step)
            log.add(train_step(model, state, next_batch, values, step, plan.accum, cfg, info))
            done = step + 1
            save_now = done == plan.end_step or (cfg.train.checkpoint_every > 0
                                                 and done % cfg.train.checkpoint_every == 0)
            if done % cfg.train.log_every == 0 or save_now:
                log.write(done, values)
            if save_now:
                save(state, cfg, ckpt_dir, done, info, lock)
        if info.is_main and plan.end_step == plan.total_steps and cfg.train.export_at_end:
            lock.check()
            export_teacher(load_checkpoint(latest_checkpoint(ckpt_dir)), out_dir / "export")
    finally:
        log.close()


if __name__ == "__main__":
    code = main()
    if code:  # every rank stops on an error it knows of: the exit finishes even if the launcher's SIGTERM comes
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # now (torchrun sends it once any rank has exited)
    sys.exit(code)
