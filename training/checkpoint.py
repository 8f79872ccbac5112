"""Training checkpoints (atomic, keep-last-N, `weights_only`-loadable) and the teacher export
(docs/training-recipe.md §10).

A checkpoint is a plain dict of tensors and containers:
    format_version, step, student, teacher, optimizer, scaler, centers, config, rng
written by rank 0 through `tcore.files.write_atomic` (to `ckpt_<step>.pt.tmp`, fsynced, then renamed
to `ckpt_<step>.pt`), so a crash during a save leaves the previous checkpoint as the latest complete one.
The models are saved unwrapped (no DDP `module.` nor compile `_orig_mod.` prefixes).

A resumed run takes the newest checkpoint that loads and passes the checks of `load_checkpoint`
(`newest_good_checkpoint`): one that fails (cut short by a full disk or an interrupted copy,
non-finite weights, ...) is logged with the reason and renamed to `<name>.broken`, kept for
inspection but never tried again, and the one before it is tried.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

import tcore
from tcore.checkpoint import to_official_state_dict
from tcore.errors import CheckpointError, FileAccessError, MissingFileError
from tcore.files import write_atomic

from training.config import config_from_dict

__all__ = ["FORMAT_VERSION", "save_checkpoint", "latest_checkpoint", "load_checkpoint", "newest_good_checkpoint",
           "export_teacher"]

FORMAT_VERSION = 1
BROKEN_SUFFIX = ".broken"
_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
_KEYS = ("format_version", "step", "student", "teacher", "optimizer", "scaler", "centers", "config", "rng")
_logger = logging.getLogger(__name__)


def save_checkpoint(folder: str | Path, state: dict[str, Any], step: int, keep_last: int) -> Path:
    """Write `state` as `<folder>/ckpt_<step>.pt` atomically, then keep only the last `keep_last`.

    Args:
        folder: checkpoint folder (created).
        state: tensors and plain containers only (checked by loading rules at resume).
        step: the number of optimizer steps done.
        keep_last: how many checkpoints to keep (>= 1).

    Returns:
        The checkpoint path.

    Raises:
        FileAccessError: the file cannot be written (the previous checkpoints are left as they were).
    """
    folder = Path(folder)
    path = folder / f"ckpt_{step:08d}.pt"
    try:
        write_atomic(path, lambda tmp: _torch_save(state, tmp), durable=True, temporary=f"{path}.tmp")
    except OSError as err:  # a full disk, a read-only or vanished file system: the previous checkpoint stays
        os_error = err.__cause__ if isinstance(err, FileAccessError) and isinstance(err.__cause__, OSError) else err
        raise FileAccessError(f"checkpoint {path}: cannot be written ({os_error.strerror or os_error}); free space "
                              "under train.output_dir (or lower train.keep_last) and relaunch: the run resumes from the "
                              "last checkpoint") from err
    for old in _checkpoints(folder)[:-max(keep_last, 1)]:
        old.unlink(missing_ok=True)
    for stale in folder.glob("ckpt_*.pt.tmp"):  # left by a crash during an earlier save
        stale.unlink(missing_ok=True)
    return path


def _torch_save(obj: Any, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)


def _checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint (temporary files of an interrupted save are ignored)."""
    found = _checkpoints(Path(folder))
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint on the CPU with `weights_only=True`, and check it.

    The checks: a dict of the current format_version with every entry of a checkpoint, a step that
    matches the file name, finite student and teacher weights.

    Raises:
        MissingFileError: no such file.
        FileAccessError: the file cannot be read (permissions).
        CheckpointError: anything else; the message names the file and the reason in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as err:
        raise FileAccessError(f"checkpoint {path}: cannot be read ({err.strerror})") from err
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {path}: {_load_failure(err)}") from err
    if not isinstance(state, dict) or "format_version" not in state:
        keys = list(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path}: not a tcore training checkpoint (found {keys}); "
                              "to load released weights use tcore.tcore_vits16(pretrained=path)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format_version {state['format_version']}, this code reads "
                              f"{FORMAT_VERSION}")
    problem = _problem(path, state)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    return state


def _load_failure(err: BaseException) -> str:
    """Why torch.load failed, in one line, without torch's advice to load unsafely."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in first.lower():
        return "holds objects other than tensors and plain containers, which safe (weights_only) loading refuses"
    if isinstance(err, EOFError) or "zip archive" in first or "central directory" in first:
        return f"not a complete checkpoint file (cut short, e.g. by a full disk or an interrupted copy: {first})"
    return f"cannot be loaded ({type(err).__name__}: {first})"


def _problem(path: Path, state: dict[str, Any]) -> str | None:
    """What is wrong with a loaded checkpoint's content, or None."""
    missing = [k for k in _KEYS if k not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    match = _NAME.match(path.name)
    if not isinstance(state["step"], int) or (match and int(match.group(1)) != state["step"]):
        return f"holds step {state['step']!r}, its name says {int(match.group(1)) if match else '?'}"
    for part in ("student", "teacher"):
        if not isinstance(state[part], dict):
            return f"its {part} is a {type(state[part]).__name__}, not a state dict"
        for name, tensor in state[part].items():
            if not isinstance(tensor, torch.Tensor) or not bool(torch.isfinite(tensor).all()):
                return f"{part}.{name} is not a finite tensor"
    return None


def newest_good_checkpoint(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of `folder` that loads and passes the checks, and its content.

    Candidates are tried newest first; each that fails is logged (a warning with the reason) and
    renamed to `<name>.broken` (kept, never deleted, never tried again).

    Returns:
        (path, loaded checkpoint), or None when no candidate passes (or there is none).
    """
    for path in reversed(_checkpoints(Path(folder))):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            broken = path.with_name(path.name + BROKEN_SUFFIX)
            os.replace(path, broken)
            _logger.warning("%s; renamed to %s (kept), trying the previous checkpoint", err, broken.name)
    return None


def export_teacher(state: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write the teacher as `tcore` loads it: a `save_pretrained` folder and the official layout
    (official key names: `register_tokens`, `pos_embed` with its class slot).

    Args:
        state: a loaded training checkpoint.
        out_dir: output folder; gets `config.json` + `model.safetensors` and
            `teacher_checkpoint.pth` = {"teacher": {"backbone.<name>": ..., "dino_head.<name>": ...}}.

    Returns:
        (the folder, the .pth path). Load with `tcore.tcore_vits16(pretrained=folder)` (ViT-S/16),
        `tcore.tcore_vitb16(...)`, or `tcore.TCoReBackbone(embed_dim=..., depth=..., num_heads=...,
        pretrained=folder)` for other sizes.
    """
    args = config_from_dict(state["config"]).model.as_kwargs()  # every architecture argument, from one source
    backbone = tcore.TCoReBackbone(**{**args, "drop_path_rate": 0.0})  # the teacher has no stochastic depth
    teacher = state["teacher"]
    backbone_state = {k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")}
    backbone.load_state_dict(backbone_state, strict=True)
    out = Path(out_dir)
    backbone.save_pretrained(out, config={"source": "tcore training", "step": int(state["step"])})
    official = {**{f"backbone.{k}": v for k, v in to_official_state_dict(backbone_state).items()},
                **{k: v for k, v in teacher.items() if not k.startswith("backbone.")}}
    pth = write_atomic(out / "teacher_checkpoint.pth", lambda tmp: _torch_save(
        {"teacher": {k: v.float().contiguous() for k, v in official.items()}}, tmp))
    _logger.info("exported the teacher of step %d to %s", state["step"], out)
    return out, pth
