"""Training checkpoints (atomic, keep-last-N, `weights_only`-loadable) and the teacher export
(docs/training-recipe.md §10).

A checkpoint is a plain dict of tensors and containers:
    format_version, step, student, teacher, optimizer, scaler, centers, config, rng
written by rank 0 through `tcore.files.write_atomic` (to `ckpt_<step>.pt.tmp`, fsynced, then renamed
to `ckpt_<step>.pt`), so a crash during a save leaves the previous checkpoint as the latest complete one.
The models are saved unwrapped (no DDP `module.` nor compile `_orig_mod.` prefixes).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

import tcore
from tcore.checkpoint import to_official_state_dict
from tcore.files import write_atomic

__all__ = ["FORMAT_VERSION", "save_checkpoint", "latest_checkpoint", "load_checkpoint", "export_teacher"]

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
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
    """
    folder = Path(folder)
    path = folder / f"ckpt_{step:08d}.pt"
    write_atomic(path, lambda tmp: _torch_save(state, tmp), durable=True, temporary=f"{path}.tmp")
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
    """Load a training checkpoint on the CPU with `weights_only=True`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a training checkpoint of a supported format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "format_version" not in state:
        keys = list(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a tcore training checkpoint (found {keys}); "
                         "to load released weights use tcore.tcore_vits16(pretrained=path)")
    if state["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format_version {state['format_version']}, this code reads "
                         f"{FORMAT_VERSION}")
    return state


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
    m = state["config"]["model"]
    backbone = tcore.TCoReBackbone(embed_dim=m["embed_dim"], depth=m["depth"], num_heads=m["num_heads"],
                                   patch_size=m["patch_size"], num_register_tokens=m["num_register_tokens"],
                                   img_size=m["img_size"])
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
