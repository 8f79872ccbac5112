"""Which checkpoint a run resumes from, and which config changes a resume accepts.

`train.resume=auto` takes the newest checkpoint of the run that loads and passes its checks
(`training.checkpoint.newest_good_checkpoint`: a broken one is renamed `<name>.broken`);
`train.resume=<file>` takes that file; `train.resume=""` starts from step 0. The whole resolved
config is then compared with the checkpoint's (`training.config.config_changes`): a change of a
key that changes the training refuses to resume, one line per key, unless the key is named in
`train.resume_changes`; bookkeeping keys (`training.config.NEVER_BLOCK_RESUME`) never block.
Rank 0 decides; `training.pretrain.resume` hands the decision to every rank.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tcore.errors import CheckpointError
from training.checkpoint import BROKEN_SUFFIX, load_checkpoint, newest_good_checkpoint
from training.config import NEVER_BLOCK_RESUME, Config, ConfigError, config_changes, resume_change_keys

__all__ = ["choose_checkpoint", "check_config_changes"]

_logger = logging.getLogger("training")


def choose_checkpoint(cfg: Config, ckpt_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from, loaded and checked, with its config accepted (rank 0).

    Returns:
        (path, checkpoint), or None to start from step 0 (train.resume="", or auto in a run that
        has written no checkpoint).

    Raises:
        CheckpointError: train.resume=auto finds only broken checkpoints, or the file named by
            train.resume fails its checks (the message names it and the reason).
        ConfigError: the config changes the training (see `check_config_changes`).
    """
    if cfg.train.resume == "":
        return None
    if cfg.train.resume == "auto":
        found = newest_good_checkpoint(ckpt_dir)
        if found is None:
            broken = sorted(p.name for p in ckpt_dir.glob(f"ckpt_*.pt{BROKEN_SUFFIX}"))
            if broken:
                raise CheckpointError(f"train.resume=auto: {ckpt_dir} holds no usable checkpoint, only "
                                      f"{', '.join(broken)} (the log says why each is broken); to start this run "
                                      "again from step 0, set train.resume=\"\"")
            return None
    else:
        path = Path(cfg.train.resume)
        try:
            found = path, load_checkpoint(path)
        except CheckpointError as err:
            raise CheckpointError(f"train.resume={path}: {err}") from err
    check_config_changes(found[0], found[1]["config"], cfg)
    return found


def check_config_changes(path: Path, saved: dict[str, Any], cfg: Config) -> None:
    """Refuse a resume whose config changes the training, unless train.resume_changes accepts each change.

    Accepted changes are logged as warnings, bookkeeping changes as information.

    Args:
        path: the checkpoint (named in the messages).
        saved: its config (a plain nested dict).
        cfg: this run's config.

    Raises:
        ConfigError: one line per refused key, `key: old -> new`, and the override that accepts them.
    """
    accepted = set(resume_change_keys(cfg))
    refused = []
    for key, old, new in config_changes(saved, cfg):
        change = f"{key}: {old!r} -> {new!r}"
        if key in NEVER_BLOCK_RESUME:
            _logger.info("resuming with a changed %s (bookkeeping)", change)
        elif key in accepted:
            _logger.warning("resuming with a changed %s (accepted by train.resume_changes)", change)
        else:
            refused.append((key, change))
    if refused:
        lines = "\n".join(f"  {change}" for _, change in refused)
        keys = ",".join(key for key, _ in refused)
        raise ConfigError(f"train.resume: {path} was trained with another config, and these keys change the "
                          f"training:\n{lines}\nto resume with them anyway, add train.resume_changes={keys} "
                          "(or train in another train.output_dir)")
