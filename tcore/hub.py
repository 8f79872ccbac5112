"""The Hugging Face format of tcore backbones: `config.json` (architecture, position-embedding
rule, normalisation, provenance) + `model.safetensors`, written atomically and read strictly, from
a folder or a Hub repo (through the Hugging Face cache, honouring HF_HUB_OFFLINE).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import weights as _weights
from ._version import __version__

if TYPE_CHECKING:
    from .backbone import TCoReBackbone, TimmViTBackbone

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "FORMAT_VERSION", "save_pretrained", "from_pretrained", "read_config",
           "fetch_pretrained_folder"]

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def read_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME}; expected a folder written by save_pretrained()")
    with open(cfg_path) as f:
        return json.load(f)


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_pretrained(model: "TCoReBackbone | TimmViTBackbone", save_directory: str | os.PathLike,
                    **metadata: Any) -> Path:
    """Write `config.json` + `model.safetensors` (fp32 as held by the model), atomically.

    Args:
        model: a tcore backbone.
        save_directory: folder to create or fill.
        **metadata: JSON-serialisable extras stored in `config.json` (e.g. source, sha256).

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    from .backbone import TCoReBackbone, TimmViTBackbone

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, TCoReBackbone):
        arch_name, state = "TCoReBackbone", model.state_dict()
    elif isinstance(model, TimmViTBackbone):
        if not model.timm_name:
            raise ValueError("model: this timm backbone was built from a module whose timm name is unknown; "
                             "build it with tcore.load_backbone('<timm name>', ...) to save it")
        arch_name, state = "TimmViTBackbone", model.model.state_dict()
    else:
        raise TypeError(f"model: expected a tcore backbone, got {type(model).__name__}")
    config = {
        "architecture": arch_name,
        "model_args": model.arch,
        "pos_interp": model.pos_interp,
        "patch_size": model.patch_size,
        "mean": list(model.mean),
        "std": list(model.std),
        "format_version": FORMAT_VERSION,
        "tcore_version": __version__,
        **metadata,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    _atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(config, indent=2, sort_keys=False) + "\n"
    _atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return folder


def fetch_pretrained_folder(repo_id_or_dir: str, revision: str | None, cache_dir: str | None) -> Path:
    local = Path(repo_id_or_dir)
    if local.is_dir():
        return local
    if repo_id_or_dir.count("/") != 1 or local.exists():
        raise FileNotFoundError(f"{repo_id_or_dir}: not a folder, and not a Hub repo id of the form 'org/name'")
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(Path(_weights._hf_hub_download(repo_id_or_dir, filename, revision=revision, cache_dir=cache_dir)))
        except (OSError, ConnectionError, ValueError) as err:
            raise _weights.WeightsUnavailableError(
                _weights._unavailable_message(repo_id_or_dir, repo_id_or_dir, filename, revision, err,
                                             f"hf download {repo_id_or_dir}")) from err
    if paths[0].parent != paths[1].parent:
        raise _weights.CheckpointError(f"{repo_id_or_dir}: config and weights resolved to different snapshots")
    return paths[0].parent


def from_pretrained(repo_id_or_dir: str | os.PathLike, *, revision: str | None = None,
                    cache_dir: str | None = None) -> "TCoReBackbone | TimmViTBackbone":
    """Rebuild a backbone from `config.json` + `model.safetensors` (a folder or a Hub repo), strictly.

    Raises:
        FileNotFoundError / WeightsUnavailableError: nothing there, or offline and not cached.
        CheckpointError: the weights do not match the config.
    """
    folder = fetch_pretrained_folder(str(repo_id_or_dir), revision, cache_dir)
    config = read_config(folder)
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise _weights.CheckpointError(f"{folder}: format_version {config['format_version']} is newer than this tcore "
                              f"({__version__}) reads; upgrade tcore")
    arch = config.get("architecture")
    if arch == "TCoReBackbone":
        from .backbone import TCoReBackbone

        model = TCoReBackbone(**config["model_args"], pos_interp=config.get("pos_interp", "tcore"))
        _weights.load_weights_into(model, folder)
        return model
    if arch == "TimmViTBackbone":
        from .models import load_backbone

        args = config["model_args"]
        return load_backbone(args["timm_name"], weights=folder / WEIGHTS_NAME, pos_interp=config["pos_interp"],
                             **args.get("timm_kwargs", {}))
    raise _weights.CheckpointError(f"{folder}/{CONFIG_NAME}: unknown architecture {arch!r}")
