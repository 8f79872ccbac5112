"""Checkpoint files: read them safely, recognise the official layouts, convert their keys, load
them strictly (one loader for every path, timm's included) and describe files nobody has seen.

Loading is always `file -> convert_state_dict -> check_state_dict -> load_state_dict(strict=True)`.
`.pth` files are read with `torch.load(weights_only=True)`; nothing is ever unpickled.

Key conversion (official DINOv2/T-CoRe layout -> `TCoReViT`): `register_tokens` -> `reg_token`,
`pos_embed` (1, 1+g*g, D) -> `cls_pos_embed` (its class slot) and `pos_embed` (1, g*g, D); the
other names are equal. `to_official_state_dict` is the inverse, `to_timm_state_dict` folds the
class position into `cls_token` for stock timm (exact for inference, not for training).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .architecture import ARCHITECTURES, TCoReViT
from .errors import CheckpointError, MissingFileError
from .files import sha256sum

__all__ = [
    "read_checkpoint",
    "convert_state_dict",
    "to_official_state_dict",
    "to_timm_state_dict",
    "find_architecture",
    "check_state_dict",
    "CheckedStateDict",
    "load_checkpoint",
    "filter_pretrained_for_timm",
    "inspect_checkpoint",
]

_WRAPPER_PREFIXES = ("module.", "_fsdp_wrapped_module.", "_orig_mod.", "backbone.")
_HEAD_PREFIXES = ("dino_head.", "ibot_head.")
_NESTING_KEYS = ("teacher", "model", "state_dict")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


# ---------------------------------------------------------------------------------- reading files

def read_checkpoint(path: str | os.PathLike) -> Any:
    """The raw contents of a `.safetensors` file or a torch checkpoint, loaded safely.

    What the file is comes from its first bytes, not its name: a torch checkpoint (a zip archive,
    or a legacy pickle), a safetensors file (whatever its suffix), or something else, which is
    named (an image, a video, a text file, ...) in a `CheckpointError`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a folder, a file that is not a checkpoint (named), a truncated/corrupt
            file, or a pickle that `weights_only=True` refuses.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file; a save_pretrained folder holds "
                              f"config.json and model.safetensors")
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path}: no such file")
    kind = _file_kind(path)
    if kind == "safetensors" or path.suffix == ".safetensors":
        return _read_safetensors(path)
    if kind != "torch":
        raise CheckpointError(f"{path}: {kind}, not a checkpoint; expected a torch checkpoint (.pth, .pt, saved by "
                              "torch.save), a .safetensors file, or a save_pretrained folder")
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


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); "
                              "the file may be truncated: delete it and get it again") from err


# First bytes of files people pass by mistake, and what to call them.
_SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
               (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"\x1aE\xdf\xa3", "a WebM/MKV video"))


def _file_kind(path: Path) -> str:
    """"torch" (a zip archive or a pickle), "safetensors", or what else the file is ("a PNG image")."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"  # an 8-byte header length, then the JSON header
    if not head:
        return "an empty file"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    if head[:4] == b"RIFF":
        return {b"WEBP": "a WebP image", b"AVI ": "an AVI video", b"WAVE": "a WAV sound"}.get(head[8:12], "a RIFF file")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"an unknown file (it begins with the bytes {head[:8].hex(' ')})"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file (it begins {first!r})"


# ------------------------------------------------------------------------------------ conversion

def _unwrap(obj: Any, source: str) -> tuple[list[str], Mapping[str, torch.Tensor]]:
    """(the nesting keys followed, the state dict) of a checkpoint; the one layout walker."""
    nesting: list[str] = []
    while isinstance(obj, Mapping):
        key = next((k for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        nesting.append(key)
        obj = obj[key]
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in obj.items()):
        return nesting, obj
    if isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: unknown checkpoint layout; expected a state dict or a dict with "
                              f"'teacher', 'model' or 'state_dict'; top-level keys found: {list(obj)[:20]}")
    raise CheckpointError(f"{source}: unknown checkpoint layout: a {type(obj).__name__}, not a dict of tensors")


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _is_official_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """DINOv2-style names (T-CoRe, DINOv2): a mask token or `register_tokens`, the class slot in pos_embed."""
    return ("mask_token" in state or "register_tokens" in state) and "cls_pos_embed" not in state


def convert_state_dict(checkpoint: Any, source: str = "state dict") -> dict[str, torch.Tensor]:
    """Turn any known checkpoint layout into backbone parameter names.

    Accepts a bare state dict or one nested under "teacher", "model" or "state_dict"; strips the
    prefixes `module.`, `_fsdp_wrapped_module.`, `_orig_mod.` and `backbone.` (prefixes only, never
    substrings); drops `dino_head.*` / `ibot_head.*`; flattens DINOv2 block chunks
    (`blocks.c.i.` -> `blocks.i.`). The official DINOv2/T-CoRe layout gets `TCoReViT` names (see
    the module docstring); timm layouts keep theirs. Tensors are returned as stored (dtype unchanged).

    Raises:
        CheckpointError: the layout is not recognised (the message lists the top-level keys).
    """
    _, state = _unwrap(checkpoint, source)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = _strip_prefixes(key)
        if key.startswith(_HEAD_PREFIXES):
            continue
        key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        if key in out:
            raise CheckpointError(f"{source}: two entries map to the backbone key {key!r}")
        out[key] = value
    if not _is_official_layout(out):
        return out
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
    if "pos_embed" in out:
        pos = out.pop("pos_embed")  # (1, 1+g*g, D): the class slot first
        out["cls_pos_embed"], out["pos_embed"] = pos[:, :1], pos[:, 1:]
    return out


def to_official_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`TCoReViT` names -> the official layout's (`register_tokens`, `pos_embed` with its class slot)."""
    out = {k: v for k, v in state.items() if k not in ("reg_token", "cls_pos_embed", "pos_embed")}
    out["pos_embed"] = torch.cat([state["cls_pos_embed"], state["pos_embed"]], dim=1)  # (1, 1+g*g, D)
    if "reg_token" in state:
        out["register_tokens"] = state["reg_token"]
    return out


def to_timm_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`TCoReViT` names -> a stock timm `VisionTransformer(no_embed_class=True)`'s: the class
    position folded into `cls_token` (what the official forward adds), no mask token."""
    out = {k: v for k, v in state.items() if k not in ("cls_pos_embed", "mask_token")}
    out["cls_token"] = state["cls_token"] + state["cls_pos_embed"]
    return out


# ------------------------------------------------------------------------------ strict checking

def find_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a converted backbone state dict says about its architecture.

    Returns:
        dict with embed_dim, depth, patch_size, num_register_tokens, mlp_hidden, pos_grid (side of
        the square patch position table) - each None when the key that reveals it is absent.
    """
    def shape(key: str) -> tuple[int, ...] | None:
        return tuple(state[key].shape) if key in state else None

    depth_ids = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))}
    cls, pos, reg = shape("cls_token"), shape("pos_embed"), shape("reg_token")
    patch, fc1 = shape("patch_embed.proj.weight"), shape("blocks.0.mlp.fc1.weight")
    n_pos = pos[1] if pos else None
    side = int(round(n_pos ** 0.5)) if n_pos else None
    return dict(
        embed_dim=cls[-1] if cls else (patch[0] if patch else None),
        depth=max(depth_ids) + 1 if depth_ids else 0,
        patch_size=patch[-1] if patch else None,
        num_register_tokens=reg[1] if reg else 0,
        mlp_hidden=fc1[0] if fc1 else None,
        pos_grid=side if side and side * side == n_pos else None,
    )


def _expected_architecture(args: Mapping[str, Any]) -> dict[str, Any]:
    """What `find_architecture` must find for a TCoReViT built with `args`."""
    img = args["img_size"]
    grid = img // args["patch_size"] if isinstance(img, int) else None  # find_architecture: square tables only
    return dict(embed_dim=args["embed_dim"], depth=args["depth"], patch_size=args["patch_size"],
                num_register_tokens=args["num_register_tokens"],
                mlp_hidden=int(args["embed_dim"] * args["mlp_ratio"]), pos_grid=grid)


def _describe(arch: Mapping[str, Any]) -> str:
    return (f"embed_dim={arch['embed_dim']}, depth={arch['depth']}, patch={arch['patch_size']}, "
            f"registers={arch['num_register_tokens']}, mlp_hidden={arch['mlp_hidden']}, "
            f"pos_embed grid={arch['pos_grid']}x{arch['pos_grid']}")


_IDENTITY = ("embed_dim", "depth", "patch_size", "num_register_tokens", "mlp_hidden")  # pos_grid may differ


def _architecture_name(found: Mapping[str, Any]) -> str | None:
    """The public architecture a state dict's shapes belong to (all but the position grid), if any."""
    for name, args in ARCHITECTURES.items():
        expected = _expected_architecture(args)
        if not name.startswith("_") and all(found[k] == expected[k] for k in _IDENTITY):
            return name
    return None


def _mismatch_hint(model_name: str, expected: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    """What to do about an architecture mismatch: the constructor that fits, or load_backbone."""
    guess = _architecture_name(found)
    if guess is not None and guess != model_name:
        return f" (this looks like a {guess} checkpoint: use tcore.{guess})"
    if found["patch_size"] == expected["patch_size"] and found["num_register_tokens"] == expected["num_register_tokens"]:
        return ""
    unlike = []
    if found["patch_size"] != expected["patch_size"]:
        unlike.append(f"patch {found['patch_size']}")
    if found["num_register_tokens"] != expected["num_register_tokens"]:
        regs = found["num_register_tokens"]
        unlike.append(f"{regs} register tokens" if regs else "no 'register_tokens'")
    return (f" (not a T-CoRe checkpoint: {', '.join(unlike)}; for other ViTs such as DINO or DINOv2 use "
            "tcore.load_backbone(path), which reads the architecture from the file)")


def _model_name(model: nn.Module) -> str:
    if not isinstance(model, TCoReViT):
        return type(model).__name__
    arch = model.args.as_kwargs()
    for name, args in ARCHITECTURES.items():
        if all(arch[k] == v for k, v in args.items()):
            return name
    return "TCoReViT(" + ", ".join(f"{k}={v}" for k, v in arch.items()) + ")"


def _listed(keys: list[str]) -> str:
    return f"{keys[:10]}{' ...' if len(keys) > 10 else ''}"


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                     allow_missing: tuple[str, ...] = ()) -> None:
    """Refuse a converted state dict that does not fit `model` exactly.

    Args:
        model: the module the weights are for (a T-CoRe backbone, or any timm ViT).
        state: `convert_state_dict` output.
        source: the file (or "state dict") named by the errors.
        allow_missing: key prefixes the model may have and the weights lack (a new classifier head).

    Raises:
        CheckpointError: the message names the file and, for a T-CoRe backbone, the expected and
        the found architecture (with the constructor that fits); else the missing, unexpected and
        mis-shaped keys; or the tensors that hold NaN or infinity.
    """
    if isinstance(model, TCoReViT):
        expected = _expected_architecture(model.arch)
        found = find_architecture(state)
        if found != expected:
            name = _model_name(model)
            raise CheckpointError(f"{source}: architecture mismatch for {name}:\n  expected {_describe(expected)}\n"
                                  f"  found    {_describe(found)}{_mismatch_hint(name, expected, found)}")
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(allow_missing))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: keys do not match {_model_name(model)} (strict loading): "
                              f"missing {_listed(missing)}, unexpected {_listed(unexpected)}")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{source}: tensor shapes differ from {_model_name(model)}: {wrong[:10]}")
    _check_finite(state, source)


def _check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged run, a damaged file), naming the tensors."""
    # a sum is finite when no value is NaN or infinite (and is fast); an overflowing sum is checked element-wise
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v.sum()))
           and not bool(torch.isfinite(v).all())]
    if bad:
        first = state[bad[0]]
        count = int((~torch.isfinite(first)).sum())
        more = f" (and {len(bad) - 1} more tensors: {_listed(bad[1:])})" if len(bad) > 1 else ""
        raise CheckpointError(f"{source}: tensor {bad[0]!r} holds {count} NaN/inf value(s) of {first.numel()}{more}; "
                              "these weights come from a diverged run or a damaged file: load another checkpoint")


class CheckedStateDict(dict):
    """A converted state dict that `check_state_dict` accepted for the model it is loaded into: a
    `load_state_dict` that converts and checks what it is given (`TCoReBackbone`'s) skips the work."""


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> None:
    """Load a checkpoint into a backbone, strictly: the one loader of every tcore path.

    Args:
        model: the module to fill (a T-CoRe backbone, or a timm ViT for timm-layout files).
        checkpoint: an official `.pth`, a `.safetensors` file, or an (official-layout or converted)
            state dict.

    Raises:
        FileNotFoundError: missing file. CheckpointError: unreadable file or any mismatch (see
        `check_state_dict`).
    """
    if isinstance(checkpoint, Mapping):
        source, raw = "state dict", checkpoint
    else:
        source, raw = str(checkpoint), read_checkpoint(checkpoint)
    state = convert_state_dict(raw, source)
    check_state_dict(model, state, source)
    model.load_state_dict(CheckedStateDict(state), strict=True)


def filter_pretrained_for_timm(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's `pretrained_filter_fn` for T-CoRe models: convert the official layout, check strictly.

    timm reads the file (`weights_only=True`) and loads the result with `strict=True`; this makes
    its errors tcore's (file, expected and found architecture). A classifier head the checkpoint
    lacks is left to timm, which keeps it random when num_classes differs from the weights'.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    source = (cfg.get("file") or "/".join(str(p) for p in (cfg.get("hf_hub_id"), cfg.get("hf_hub_filename")) if p)
              or "pretrained weights")
    state = convert_state_dict(state_dict, source)
    new_head = "head.weight" not in state and int(getattr(model, "num_classes", 0)) > 0
    check_state_dict(model, state, source, allow_missing=("head.",) if new_head else ())
    return CheckedStateDict(state)


# ------------------------------------------------------------------------------------ inspection

def _pos_table(state: Mapping[str, torch.Tensor], registers: int) -> tuple[int | None, int]:
    """(side of the square patch position grid, leading non-patch slots: 0, 1 for a class token, or 1 +
    registers) of a converted state dict's `pos_embed`; (None, 0) without a square grid."""
    if "pos_embed" not in state or state["pos_embed"].ndim != 3:
        return None, 0
    n = state["pos_embed"].shape[1]
    for prefix in (0, 1, 1 + registers):
        side = int(round(max(n - prefix, 0) ** 0.5))
        if side and side * side == n - prefix:
            return side, prefix
    return None, 0


def _what(found: Mapping[str, Any], layout: str, name: str | None, nesting: list[str], n_parameters: int,
          prefix: int, head: int) -> str:
    """One sentence: what a checkpoint holds (the layout, the ViT's shape and backbone parameters
    (training heads dropped), a classifier head (`head` classes, 0 for none), the tcore architecture it is)."""
    held = "a teacher checkpoint" if "teacher" in nesting else "a checkpoint" if nesting else "a state dict"
    if not (found["patch_size"] and found["depth"] and found["pos_grid"]):
        return f"{held} of {n_parameters / 1e6:.1f} M parameters, not a ViT backbone (no patch_embed, pos_embed, blocks)"
    slot = {0: "", 1: " plus a class slot"}.get(prefix, " plus class and register slots")
    regs = found["num_register_tokens"]
    return (f"{held} of a ViT in {layout}: width {found['embed_dim']}, depth {found['depth']}, patch "
            f"{found['patch_size']}, {regs or 'no'} register{'s' * (regs != 1)}, position table "
            f"{found['pos_grid']}x{found['pos_grid']}{slot}, {n_parameters / 1e6:.1f} M parameters"
            + (f", a {head}-class head" if head else "") + (f"; the T-CoRe architecture {name}" if name else ""))


def inspect_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a checkpoint nobody here has seen: what it is, layout, keys, architecture, sha256.

    Whether `tcore.load_backbone` loads the file is `tcore inspect`'s to say (it tries): this
    module sits below the model constructors.

    Args:
        path: a `.pth` / `.safetensors` file, or a folder holding `model.safetensors`.

    Returns:
        A JSON-serialisable dict: path, size_bytes, sha256, what (one sentence: the layout, the
        ViT's shape, the T-CoRe architecture if it is one), layout (how the state dict is nested),
        key_layout ("official DINOv2/T-CoRe", "tcore" or "timm"), top_level_keys, n_tensors,
        n_parameters, dtypes, key_prefixes (counts), first_keys, dropped_keys, architecture (as
        found; pos_grid also for tables with class or register slots), matches (the tcore
        architecture it fits, if any), loads_strictly (into that architecture; error when not).
    """
    from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE

    path = Path(path)
    if path.is_dir():
        path = path / SAFETENSORS_SINGLE_FILE
    raw = read_checkpoint(path)
    report: dict[str, Any] = {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": sha256sum(path),
        "top_level_keys": [str(k) for k in raw][:50] if isinstance(raw, Mapping) else [],
    }
    try:
        nesting, tensors = _unwrap(raw, str(path))
    except CheckpointError as err:
        report.update(what=f"not a state dict: {err}", layout="file", architecture=None, matches=None,
                      loads_strictly=False, error=str(err))
        return report
    prefixes: dict[str, int] = {}
    for key in tensors:
        head = key.split(".")[0]
        prefixes[head] = prefixes.get(head, 0) + 1
    n_parameters = int(sum(v.numel() for v in tensors.values()))
    report.update(
        layout=" -> ".join(["file"] + [f"[{k!r}]" for k in nesting]),
        n_tensors=len(tensors),
        n_parameters=n_parameters,
        dtypes=sorted({str(v.dtype).replace("torch.", "") for v in tensors.values()}),
        key_prefixes=prefixes,
        first_keys=list(tensors)[:12],
        dropped_keys=sorted({k.split(".")[0] for k in tensors if _strip_prefixes(k).startswith(_HEAD_PREFIXES)}),
    )
    try:
        state = convert_state_dict(raw, str(path))
    except CheckpointError as err:
        report.update(what=f"not a backbone state dict: {err}", architecture=None, matches=None,
                      loads_strictly=False, error=str(err))
        return report
    found = find_architecture(state)
    name = next((n for n, a in ARCHITECTURES.items() if _expected_architecture(a) == found), None)
    grid, prefix = _pos_table(state, found["num_register_tokens"])
    stripped = {_strip_prefixes(k): v for k, v in tensors.items()}
    key_layout = ("official DINOv2/T-CoRe" if _is_official_layout(stripped) else
                  "tcore" if "cls_pos_embed" in state else "timm")
    described = {**found, "pos_grid": grid}
    n_backbone = int(sum(v.numel() for v in state.values()))
    head = int(state["head.weight"].shape[0]) if "head.weight" in state else 0
    report.update(what=_what(described, f"the {key_layout} layout", name, nesting, n_backbone, prefix, head),
                  key_layout=key_layout, architecture=described, matches=name, loads_strictly=False)
    if name is not None:
        try:
            check_state_dict(TCoReViT(**ARCHITECTURES[name]), state, str(path))
            report["loads_strictly"] = True
        except CheckpointError as err:
            report["error"] = str(err)
    return report
