"""Released T-CoRe weights: registry, download, conversion of official files, strict loading and
inspection (the Hugging Face format lives in `tcore.hub`).

Loading always goes `file -> convert_state_dict -> architecture check -> load_state_dict(strict=True)`.
Official `.pth` files are read with `torch.load(weights_only=True)`; nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ._version import __version__

if TYPE_CHECKING:
    from .backbone import TCoReBackbone

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "PaperScores",
    "PretrainedWeights",
    "WeightsUnavailableError",
    "convert_state_dict",
    "download",
    "find_architecture",
    "get_pretrained",
    "inspect_checkpoint",
    "list_models",
    "load_weights_into",
    "read_checkpoint",
    "sha256sum",
]

_logger = logging.getLogger(__name__)

HF_REPO = "yafeng19/T-CORE"

# Architecture is code: the constructor arguments of each named T-CoRe backbone.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tcore_vits16": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16, num_register_tokens=4,
                         mlp_ratio=4.0, img_size=224),
    "tcore_vitb16": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, num_register_tokens=4,
                         mlp_ratio=4.0, img_size=224),
    # private, for tests and CPU training runs: the golden fixture's official tiny ViT
    "_tcore_vit_tiny": dict(embed_dim=64, depth=2, num_heads=2, patch_size=16, num_register_tokens=4,
                            mlp_ratio=4.0, img_size=224),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose contents do not match the architecture."""


class WeightsUnavailableError(FileNotFoundError):
    """Released weights that are neither cached nor downloadable (e.g. offline)."""


@dataclass(frozen=True)
class PaperScores:
    """Label-propagation results reported in the paper (Table 1 / Table 2), in percent."""

    davis_jf: float
    davis_j: float
    davis_f: float
    vip_miou: float
    jhmdb_pck01: float
    jhmdb_pck02: float


@dataclass(frozen=True)
class PretrainedWeights:
    """One released checkpoint: where it lives and what it is."""

    arch: str
    tag: str
    filename: str
    data: str
    epochs: int
    scores: PaperScores
    repo_id: str = HF_REPO
    revision: str | None = None  # a pinned commit sha once verified; None = the repo's main branch
    sha256: str | None = None  # checked when set; None = unverified (the file could not be opened here)
    license: str = "apache-2.0 (the official repository's licence; the Hub card states none for the weights)"

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"


_PRETRAINED: dict[str, dict[str, PretrainedWeights]] = {
    "tcore_vits16": {
        "k400": PretrainedWeights("tcore_vits16", "k400", "ckpt/vits16_400ep_K400.pth", "Kinetics-400", 400,
                                  PaperScores(64.7, 63.5, 66.0, 37.8, 47.0, 75.2)),
        "in1k": PretrainedWeights("tcore_vits16", "in1k", "ckpt/vits16_100ep_INET.pth", "ImageNet-1k", 100,
                                  PaperScores(64.1, 62.1, 66.1, 39.7, 46.2, 75.5)),
    },
    "tcore_vitb16": {
        "k400": PretrainedWeights("tcore_vitb16", "k400", "ckpt/vitb16_200ep_K400.pth", "Kinetics-400", 200,
                                  PaperScores(66.4, 64.6, 68.2, 38.9, 47.1, 75.8)),
    },
}
DEFAULT_TAGS = {"tcore_vits16": "k400", "tcore_vitb16": "k400"}


# --------------------------------------------------------------------------------------- registry

def list_models() -> list[str]:
    """Names `arch.tag` of every released checkpoint, default tags first."""
    names = []
    for arch, tags in _PRETRAINED.items():
        default = DEFAULT_TAGS[arch]
        names += [f"{arch}.{default}"] + [f"{arch}.{t}" for t in tags if t != default]
    return names


def get_pretrained(name: str, tag: str | None = None) -> PretrainedWeights:
    """Registry entry for `"arch"`, `"arch.tag"`, or `name="arch", tag="tag"`.

    Raises:
        ValueError: unknown architecture or tag; the message lists the valid names.
    """
    arch, _, name_tag = name.partition(".")
    if tag is not None and name_tag and tag != name_tag:
        raise ValueError(f"weights: {name!r} names tag {name_tag!r} but weights={tag!r} was given")
    tag = tag or name_tag or DEFAULT_TAGS.get(arch)
    if arch not in _PRETRAINED:
        raise ValueError(f"unknown model {name!r}; released weights: {', '.join(list_models())}")
    if tag not in _PRETRAINED[arch]:
        raise ValueError(f"weights={tag!r}: {arch} has weights {sorted(_PRETRAINED[arch])} "
                         f"(default {DEFAULT_TAGS[arch]!r})")
    return _PRETRAINED[arch][tag]


# --------------------------------------------------------------------------------------- download

def _offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or env.upper() in {"1", "ON", "YES", "TRUE"}


def _hf_hub_download(repo_id: str, filename: str, *, revision: str | None, cache_dir: str | None,
                     force_download: bool = False) -> str:
    """`huggingface_hub.hf_hub_download` tagged with this library (tests patch this one function)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                           force_download=force_download, local_files_only=_offline(),
                           library_name="tcore", library_version=__version__)


def _unavailable_message(what: str, repo_id: str, filename: str, revision: str | None, cause: Exception,
                         fetch_command: str | None = None) -> str:
    rev = f" at revision {revision}" if revision else ""
    fetch_command = fetch_command or f"tcore download {what}"
    return (
        f"could not get {what}: {repo_id}/{filename}{rev} is not in the Hugging Face cache and cannot be "
        f"downloaded ({type(cause).__name__}: {cause}).\n"
        "Three ways to fix it:\n"
        f"  1. on a machine with internet, run `{fetch_command}` (fills the cache; "
        "then copy ~/.cache/huggingface here or point HF_HOME / HF_HUB_CACHE at it);\n"
        f"  2. download https://huggingface.co/{repo_id}/resolve/main/{filename} yourself and pass the local "
        "file: pretrained='path/to/file.pth' in Python, --model path/to/file.pth on the command line;\n"
        + ("  3. HF_HUB_OFFLINE is set: unset it if this machine is online."
           if _offline() else
           "  3. check the connection to huggingface.co (or HF_ENDPOINT for a mirror, and proxy settings).")
    )


def download(name: str, *, revision: str | None = None, cache_dir: str | None = None,
             force_download: bool = False) -> Path:
    """Path of a released checkpoint in the Hugging Face cache, downloading it if needed.

    Honours `HF_HUB_OFFLINE` and `HF_HOME`/`HF_HUB_CACHE`. When the registry pins a sha256, the
    file is checked against it.

    Args:
        name: `"arch"` or `"arch.tag"`, e.g. `"tcore_vits16.in1k"`.
        revision: a branch, tag or commit sha; default: the registry's pinned revision.
        cache_dir: overrides the Hugging Face cache folder.

    Raises:
        WeightsUnavailableError: offline (or unreachable) and not cached; says how to fix it.
        CheckpointError: the file's sha256 differs from the registry's.
    """
    entry = get_pretrained(name)
    revision = revision or entry.revision
    try:
        path = Path(_hf_hub_download(entry.repo_id, entry.filename, revision=revision, cache_dir=cache_dir,
                                     force_download=force_download))
    except (OSError, ConnectionError, ValueError) as err:
        # huggingface_hub raises LocalEntryNotFoundError (a FileNotFoundError), OfflineModeIsEnabled
        # (a ConnectionError) or HTTP errors (OSError); all mean "the file cannot be had now".
        raise WeightsUnavailableError(
            _unavailable_message(entry.name, entry.repo_id, entry.filename, revision, err)) from err
    if entry.sha256 is not None:
        digest = sha256sum(path)
        if digest != entry.sha256:
            raise CheckpointError(f"{path}: sha256 {digest} differs from the registry's {entry.sha256} for "
                                  f"{entry.name}; delete the file and download it again")
    else:
        _logger.info("%s: no sha256 pinned in the registry (unverified file)", entry.name)
    return path


def sha256sum(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- reading files

def read_checkpoint(path: str | os.PathLike) -> Any:
    """The raw contents of a `.safetensors` file or a torch checkpoint, loaded safely.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated/corrupt file, or a pickle that `weights_only=True` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err}); "
                                  "the file may be truncated: delete it and get it again") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by cause
        if "weights_only" in str(err) or type(err).__name__ == "UnpicklingError":
            raise CheckpointError(
                f"{path}: holds Python objects that torch.load(weights_only=True) refuses to unpickle. "
                "tcore never unpickles arbitrary objects. If you trust the file, load it yourself "
                "(torch.load(path, weights_only=False)), take its state dict and pass that dict "
                "as pretrained=, or re-save it with tensors and plain containers only.") from err
        raise CheckpointError(f"{path}: could not read the checkpoint ({type(err).__name__}: {err}); "
                              f"{path.stat().st_size} bytes on disk: the file may be truncated or corrupt, "
                              "delete it and get it again") from err


# ------------------------------------------------------------------------------------ conversion

_WRAPPER_PREFIXES = ("module.", "_fsdp_wrapped_module.", "_orig_mod.", "backbone.")
_HEAD_PREFIXES = ("dino_head.", "ibot_head.")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _unwrap(obj: Any, source: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("teacher", "model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], source)
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
        keys = list(obj)[:20]
        raise CheckpointError(f"{source}: unknown checkpoint layout; expected a state dict or a dict with "
                              f"'teacher', 'model' or 'state_dict'; top-level keys found: {keys}")
    raise CheckpointError(f"{source}: unknown checkpoint layout: a {type(obj).__name__}, not a dict of tensors")


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def convert_state_dict(checkpoint: Any, source: str = "state dict") -> dict[str, torch.Tensor]:
    """Turn any known T-CoRe checkpoint layout into `TCoReBackbone` parameter names.

    Accepts a bare state dict or one nested under "teacher", "model" or "state_dict"; strips the
    prefixes `module.`, `_fsdp_wrapped_module.`, `_orig_mod.` and `backbone.` (prefixes only, never
    substrings); drops `dino_head.*` / `ibot_head.*`; flattens DINOv2 block chunks
    (`blocks.c.i.` -> `blocks.i.`). Tensors are returned as stored (dtype unchanged).

    Raises:
        CheckpointError: the layout is not recognised (the message lists the top-level keys).
    """
    state = _unwrap(checkpoint, source)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = _strip_prefixes(key)
        if key.startswith(_HEAD_PREFIXES):
            continue
        key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        if key in out:
            raise CheckpointError(f"{source}: two entries map to the backbone key {key!r}")
        out[key] = value
    return out


def find_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a converted backbone state dict says about its architecture.

    Returns:
        dict with embed_dim, depth, patch_size, num_register_tokens, mlp_hidden, pos_grid (side of
        the square position table) - each None when the key that reveals it is absent.
    """
    def shape(key: str) -> tuple[int, ...] | None:
        return tuple(state[key].shape) if key in state else None

    depth_ids = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))}
    cls, pos, reg = shape("cls_token"), shape("pos_embed"), shape("register_tokens")
    patch, fc1 = shape("patch_embed.proj.weight"), shape("blocks.0.mlp.fc1.weight")
    n_pos = pos[1] - 1 if pos else None
    side = int(round(n_pos ** 0.5)) if n_pos else None
    return dict(
        embed_dim=cls[-1] if cls else (patch[0] if patch else None),
        depth=max(depth_ids) + 1 if depth_ids else 0,
        patch_size=patch[-1] if patch else None,
        num_register_tokens=reg[1] if reg else 0,
        mlp_hidden=fc1[0] if fc1 else None,
        pos_grid=side if side and side * side == n_pos else None,
    )


def _describe(arch: Mapping[str, Any]) -> str:
    return (f"embed_dim={arch['embed_dim']}, depth={arch['depth']}, patch={arch['patch_size']}, "
            f"registers={arch['num_register_tokens']}, mlp_hidden={arch['mlp_hidden']}, "
            f"pos_embed grid={arch['pos_grid']}x{arch['pos_grid']}")


def _expected_architecture(args: Mapping[str, Any]) -> dict[str, Any]:
    """What `find_architecture` must find for a TCoReBackbone built with `args`."""
    return dict(embed_dim=args["embed_dim"], depth=args["depth"], patch_size=args["patch_size"],
                num_register_tokens=args["num_register_tokens"],
                mlp_hidden=int(args["embed_dim"] * args["mlp_ratio"]),
                pos_grid=args["img_size"] // args["patch_size"])


def _guess_name(found: Mapping[str, Any]) -> str | None:
    for name, args in ARCHITECTURES.items():
        if name.startswith("_"):
            continue
        if (args["embed_dim"], args["depth"]) == (found["embed_dim"], found["depth"]):
            return name
    return None


def _model_name(model: "TCoReBackbone") -> str:
    for name, args in ARCHITECTURES.items():
        if args == model.arch:
            return name
    return "TCoReBackbone(" + ", ".join(f"{k}={v}" for k, v in model.arch.items()) + ")"


def load_weights_into(model: "TCoReBackbone", pretrained: Any) -> None:
    """Load a checkpoint into a `TCoReBackbone`, strictly.

    Args:
        model: the backbone to fill.
        pretrained: a path to an official `.pth`, a `.safetensors` file, a `save_pretrained`
            folder, or an (official-layout or converted) state dict.

    Raises:
        FileNotFoundError: missing file; CheckpointError: unreadable file or any mismatch (the
        message names the file, the expected and the found architecture, and the keys).
    """
    if isinstance(pretrained, Mapping):
        source, raw = "state dict", pretrained
    else:
        path = Path(pretrained)
        source = str(path)
        if path.is_dir():
            from .hub import WEIGHTS_NAME, read_config

            config = read_config(path)
            if config.get("architecture") != "TCoReBackbone":
                raise CheckpointError(f"{path}: holds a {config.get('architecture')} backbone, not a T-CoRe one; "
                                      "use tcore.load_backbone()")
            path = path / WEIGHTS_NAME
        raw = read_checkpoint(path)
    state = convert_state_dict(raw, source)
    expected = _expected_architecture(model.arch)
    found = find_architecture(state)
    if found != expected:
        guess = _guess_name(found)
        hint = f" (this looks like a {guess} checkpoint: use tcore.{guess})" if guess else ""
        if found["num_register_tokens"] == 0 and expected["num_register_tokens"]:
            hint += (" (the file has no 'register_tokens': it is not a T-CoRe checkpoint with registers; "
                     "for other ViTs use tcore.load_backbone)")
        raise CheckpointError(f"{source}: architecture mismatch for {_model_name(model)}:\n"
                              f"  expected {_describe(expected)}\n  found    {_describe(found)}{hint}")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: keys do not match {_model_name(model)} (strict loading): "
                              f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                              f"unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{source}: tensor shapes differ from {_model_name(model)}: {wrong[:10]}")
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------ inspection

def inspect_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a checkpoint nobody here has seen: layout, keys, architecture, sha256.

    Returns:
        A JSON-serialisable dict: path, size_bytes, sha256, layout (how the state dict is nested),
        top_level_keys, n_tensors, n_parameters, dtypes, key_prefixes (counts), dropped_keys,
        architecture (as found), matches (the tcore architecture it fits, if any), loads_strictly.
    """
    path = Path(path)
    if path.is_dir():
        from .hub import WEIGHTS_NAME, read_config

        read_config(path)
        path = path / WEIGHTS_NAME
    raw = read_checkpoint(path)
    layout: list[str] = []
    node: Any = raw
    while isinstance(node, Mapping):
        key = next((k for k in ("teacher", "model", "state_dict") if isinstance(node.get(k), Mapping)), None)
        if key is None:
            break
        layout.append(key)
        node = node[key]
    top_keys = [str(k) for k in raw] if isinstance(raw, Mapping) else []
    report: dict[str, Any] = {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": sha256sum(path),
        "layout": " -> ".join(["file"] + [f"[{k!r}]" for k in layout]),
        "top_level_keys": top_keys[:50],
    }
    if isinstance(node, Mapping):
        tensors = {k: v for k, v in node.items() if isinstance(v, torch.Tensor)}
        prefixes: dict[str, int] = {}
        for k in tensors:
            head = str(k).split(".")[0]
            prefixes[head] = prefixes.get(head, 0) + 1
        report.update(
            n_tensors=len(tensors),
            n_parameters=int(sum(v.numel() for v in tensors.values())),
            dtypes=sorted({str(v.dtype).replace("torch.", "") for v in tensors.values()}),
            key_prefixes=prefixes,
            first_keys=list(map(str, tensors))[:12],
        )
    try:
        state = convert_state_dict(raw, str(path))
    except CheckpointError as err:
        report.update(architecture=None, matches=None, loads_strictly=False, error=str(err))
        return report
    found = find_architecture(state)
    report["architecture"] = found
    report["dropped_keys"] = sorted({k.split(".")[0] for k in _unwrap(raw, str(path))
                                     if _strip_prefixes(k).startswith(_HEAD_PREFIXES)})
    name = next((n for n, a in ARCHITECTURES.items()
                 if _expected_architecture(a) == found), None)
    report["matches"] = name
    report["loads_strictly"] = False
    if name is not None:
        from .backbone import TCoReBackbone

        try:
            load_weights_into(TCoReBackbone(**ARCHITECTURES[name]), state)
            report["loads_strictly"] = True
        except CheckpointError as err:
            report["error"] = str(err)
    return report
