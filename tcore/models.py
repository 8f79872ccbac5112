"""Public constructors: `tcore_vits16`, `tcore_vitb16` and `load_backbone`, the one verb that makes
a backbone from a name, a path, a Hub repo or a module.

Arguments mean one thing each: `weights=` is a release tag ("k400", "in1k"); a file is a
`pretrained=` (T-CoRe constructors) or `checkpoint=` (`load_backbone` of a timm ViT) path.
T-CoRe backbones are built through timm's `build_model_with_cfg`, as `timm.create_model` builds
them, so both give the same module with the same `pretrained_cfg`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Union, overload

import torch
from timm.models import VisionTransformer, build_model_with_cfg
from torch import nn

from .architecture import ARCHITECTURES, FeatureAPI, PosInterp
from .backbone import Pretrained, TCoReBackbone, TimmViTBackbone
from .checkpoint import (convert_state_dict, filter_pretrained_for_timm, find_architecture, load_checkpoint,
                         read_checkpoint)
from .devices import resolve_device
from .errors import (CheckpointError, InvalidInputError, InvalidTypeError, MissingFileError,
                     WeightsUnavailableError)
from .hub import CONFIG_NAME, backbone_kind, fetch_folder, is_repo_id
from .weights import download, get_pretrained, hub_unreachable, release_cfg

__all__ = ["tcore_vits16", "tcore_vitb16", "load_backbone", "create_registered_model", "Backbone"]

_logger = logging.getLogger(__name__)

Backbone = Union[TCoReBackbone, TimmViTBackbone]


# ------------------------------------------------------------------------------- T-CoRe backbones

# pretrained-cfg keys that name where the weights come from (a caller's choice over the release)
_WEIGHT_SOURCES = ("file", "url", "hf_hub_id", "state_dict")


def create_registered_model(arch: str, pretrained: bool = False, **kwargs: Any) -> TCoReBackbone:
    """What timm's registry entries `tcore_vits16` / `tcore_vitb16` build (see `tcore.timm_registry`).

    The pretrained cfg is passed to timm here, not looked up in timm's registry, so a constructor
    builds the right model whether or not the registration has happened. Released weights are
    fetched by `tcore.weights.download` (the Hugging Face cache, sha256, a fast clear error
    without network), then read by timm's loader (`weights_only=True`) through
    `filter_pretrained_for_timm` (the official layout converted and checked strictly).

    Args:
        arch: "tcore_vits16" or "tcore_vitb16".
        pretrained: load the weights of the pretrained cfg.
        **kwargs: timm's `build_model_with_cfg` arguments (pretrained_cfg: a release tag, a dict
            (an `hf-hub:`/`local-dir:` folder's) or None for the default tag; pretrained_cfg_overlay,
            features_only, ...) and `TCoReBackbone` arguments.

    Raises:
        WeightsUnavailableError: pretrained=True and the release cannot be had (names the model and the fixes).
    """
    out_indices = kwargs.pop("out_indices", 3)
    cfg = kwargs.pop("pretrained_cfg", None)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    release = None
    if cfg is None or isinstance(cfg, str):  # a release tag, or the default one
        entry = get_pretrained(arch, cfg or None)
        cfg = release_cfg(entry)
        if pretrained and not any(overlay.get(k) for k in _WEIGHT_SOURCES):
            overlay["file"] = str(download(entry.name))
            release = entry.name
    model = build_model_with_cfg(TCoReBackbone, arch, pretrained, pretrained_cfg=cfg, pretrained_cfg_overlay=overlay,
                                 pretrained_filter_fn=filter_pretrained_for_timm,
                                 feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
                                 **{**ARCHITECTURES[arch], **kwargs})
    if release and isinstance(model, TCoReBackbone):
        model.release = release
    return model


def _build(arch: str, pretrained: bool | Pretrained | None, weights: str | None, **kwargs: Any) -> TCoReBackbone:
    if pretrained is None or pretrained is False:
        if weights is not None:
            raise InvalidInputError(f"weights={weights!r} has no effect with pretrained={pretrained}; "
                                    "pass pretrained=True to load those weights")
        return create_registered_model(arch, pretrained=False, **kwargs)
    if pretrained is True:
        return create_registered_model(arch, pretrained=True, pretrained_cfg=get_pretrained(arch, weights).tag,
                                       **kwargs)
    if weights is not None:
        raise InvalidInputError(f"weights={weights!r} names a release, but pretrained={pretrained!r} gives the "
                                "weights; pass one of them")
    if isinstance(pretrained, Mapping):
        model = create_registered_model(arch, pretrained=False, **kwargs)
        model.load_checkpoint(pretrained)
        return model
    if not isinstance(pretrained, (str, os.PathLike)):
        raise InvalidTypeError(f"pretrained: expected a bool, a path, a Hub repo id or a state dict, "
                               f"got {type(pretrained).__name__}")
    path = Path(pretrained).expanduser()
    if not path.exists() and is_repo_id(str(pretrained)):
        path = fetch_folder(str(pretrained))
    elif not path.exists():
        raise MissingFileError(f"pretrained={str(pretrained)!r}: no such file or folder, nor a Hub repo id "
                               f"'org/name' (release tags go to weights=, e.g. weights='in1k')")
    model = create_registered_model(arch, pretrained=False, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    model.load_checkpoint(path)
    return model


def tcore_vits16(*, pretrained: bool | Pretrained = True, weights: str | None = None,
                 **kwargs: Any) -> TCoReBackbone:
    """T-CoRe ViT-S/16 (21.7 M parameters, 4 registers), in eval mode.

    Args:
        pretrained: True for released weights, False for random init, or a checkpoint: an official
            `.pth`, a `.safetensors` file, a `save_pretrained` folder, a Hub repo id or a state dict.
        weights: the release tag: "k400" (Kinetics-400, 400 epochs; default) or "in1k"
            (ImageNet-1k, 100 epochs).
        **kwargs: TCoReBackbone arguments (e.g. drop_path_rate for training).

    Example:
        >>> model = torch.hub.load("yafeng19/T-CORE", "tcore_vits16", trust_repo=True)
        >>> tokens = model.patch_tokens(frames)  # (B, H/16, W/16, 384)
    """
    return _build("tcore_vits16", pretrained, weights, **kwargs)


def tcore_vitb16(*, pretrained: bool | Pretrained = True, weights: str | None = None,
                 **kwargs: Any) -> TCoReBackbone:
    """T-CoRe ViT-B/16 (85.8 M parameters, 4 registers), in eval mode.

    Args:
        pretrained: True for released weights, False for random init, or a checkpoint: an official
            `.pth`, a `.safetensors` file, a `save_pretrained` folder, a Hub repo id or a state dict.
        weights: the release tag: "k400" (Kinetics-400, 200 epochs; the only release).
        **kwargs: TCoReBackbone arguments.

    Example:
        >>> model = torch.hub.load("yafeng19/T-CORE", "tcore_vitb16", trust_repo=True)
        >>> tokens = model.patch_tokens(frames)  # (B, H/16, W/16, 768)
    """
    return _build("tcore_vitb16", pretrained, weights, **kwargs)


_CONSTRUCTORS = {"tcore_vits16": tcore_vits16, "tcore_vitb16": tcore_vitb16}


# ---------------------------------------------------------------------------- other backbones

# (width, depth) -> heads of the standard ViT sizes (Ti, S, B, L, g), all 64 channels per head
_STANDARD_VIT_HEADS = {(192, 12): 3, (384, 12): 6, (768, 12): 12, (1024, 24): 16, (1536, 40): 24}


def _infer_vit_args(state: Mapping[str, torch.Tensor], source: str, num_heads: int | None = None) -> dict[str, Any]:
    """Architecture of a T-CoRe-layout or timm-layout ViT state dict.

    Weights do not reveal the number of attention heads: it comes from `num_heads`, else from a
    registered tcore architecture of the same shape, else the ViT convention of 64-wide heads
    (with a warning).
    """
    found = find_architecture(state)
    if not found["embed_dim"] or not found["depth"] or not found["patch_size"] or "pos_embed" not in state:
        raise CheckpointError(f"{source}: not a ViT state dict (keys start with "
                              f"{sorted({k.split('.')[0] for k in state})[:12]})")
    dim = found["embed_dim"]
    if num_heads is None:
        known = [a["num_heads"] for a in ARCHITECTURES.values()
                 if (a["embed_dim"], a["depth"], a["patch_size"]) == (dim, found["depth"], found["patch_size"])]
        if known:
            num_heads = known[0]
        elif (dim, found["depth"]) in _STANDARD_VIT_HEADS:
            num_heads = _STANDARD_VIT_HEADS[(dim, found["depth"])]
        else:
            num_heads = max(1, dim // 64)
            _logger.warning("%s: assuming %d attention heads (64 channels per head); weights do not record "
                            "the head count: pass num_heads= if the model was trained with another", source,
                            num_heads)
    return dict(embed_dim=dim, depth=found["depth"], patch_size=found["patch_size"],
                num_heads=num_heads, mlp_ratio=found["mlp_hidden"] / dim)


def _timm_kwargs_from_state(state: Mapping[str, torch.Tensor], source: str,
                            num_heads: int | None = None) -> dict[str, Any]:
    args = _infer_vit_args(state, source, num_heads)
    regs = state["reg_token"].shape[1] if "reg_token" in state else 0
    n_pos = state["pos_embed"].shape[1]
    for no_embed_class, n_grid in ((False, n_pos - 1 - regs), (True, n_pos)):
        side = int(round(n_grid ** 0.5))
        if side * side == n_grid and (no_embed_class or regs == 0):
            break
    else:
        raise CheckpointError(f"{source}: pos_embed of {n_pos} entries is not a square grid")
    return dict(args, img_size=side * args["patch_size"], reg_tokens=regs, no_embed_class=no_embed_class,
                class_token="cls_token" in state, init_values=1e-5 if "blocks.0.ls1.gamma" in state else None,
                qkv_bias="blocks.0.attn.qkv.bias" in state, num_classes=0, global_pool="token")


def _default_pos_interp(num_register_tokens: int) -> PosInterp:
    # DINOv2 with registers and T-CoRe resize with antialias; DINOv2/DINO without registers do not.
    return "tcore" if num_register_tokens else "dinov2"


def _from_file(path: Path, pos_interp: PosInterp | None, **kwargs: Any) -> Backbone:
    """A backbone whose architecture is read from a checkpoint file's keys and shapes."""
    state = convert_state_dict(read_checkpoint(path), str(path))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    num_heads = kwargs.pop("num_heads", None)
    if "cls_pos_embed" in state:  # official DINOv2 / T-CoRe layout (converted)
        if pos_interp not in (None, "tcore"):
            raise InvalidInputError(f"pos_interp={pos_interp!r}: {path} is a T-CoRe/DINOv2-layout checkpoint, whose "
                                    "position embeddings are resized by timm's rule (bicubic with antialias) only")
        args = _infer_vit_args(state, str(path), num_heads)
        grid = int(round(state["pos_embed"].shape[1] ** 0.5))
        regs = state["reg_token"].shape[1] if "reg_token" in state else 0
        model = TCoReBackbone(**args, num_register_tokens=regs, img_size=grid * args["patch_size"], **kwargs)
        model.load_checkpoint(state)
        return model
    timm_kwargs = {**_timm_kwargs_from_state(state, str(path), num_heads), **kwargs}
    net = VisionTransformer(**timm_kwargs)
    load_checkpoint(net, state)
    interp = pos_interp or _default_pos_interp(timm_kwargs["reg_tokens"])
    _logger.info("%s: timm ViT %s, pos_interp=%s", path, timm_kwargs, interp)
    return TimmViTBackbone(net, interp, name="VisionTransformer", model_kwargs=timm_kwargs)


def _from_folder(folder: Path, pos_interp: PosInterp | None, **kwargs: Any) -> Backbone:
    """A `save_pretrained` folder (tcore format) or a timm export (timm format).

    Raises:
        MissingFileError: a folder without config.json (the message lists the checkpoint files in it).
    """
    if not (folder / CONFIG_NAME).is_file():
        raise MissingFileError(_no_config_message(folder))
    kind = backbone_kind(folder)
    if kind == "TCoReBackbone":
        return TCoReBackbone.from_pretrained(folder, **kwargs)
    if kind == "TimmViTBackbone":
        return TimmViTBackbone.from_pretrained(folder, **kwargs)
    return _from_timm(f"local-dir:{folder}", None, pos_interp, **kwargs)


def _no_config_message(folder: Path) -> str:
    """Why a folder is not a model, and the checkpoint files in it that may be meant."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    weights = [n for n in files if n.endswith((".pth", ".pt", ".bin", ".ckpt", ".safetensors"))]
    message = (f"model={str(folder)!r}: a folder without {CONFIG_NAME}, so neither a save_pretrained folder nor a "
               f"timm export (both hold {CONFIG_NAME} and model.safetensors)")
    if weights:
        return message + f"; to load a checkpoint file in it, pass the file: {str(folder / weights[0])!r}"
    held = f"it holds {', '.join(files[:5])}{', ...' if len(files) > 5 else ''}" if files else "it is empty"
    return message + f"; {held}. Pass a checkpoint file (.pth, .safetensors) or a save_pretrained folder"


def _from_timm(name: str, checkpoint: str | os.PathLike | None, pos_interp: PosInterp | None,
               **kwargs: Any) -> Backbone:
    """A timm model name (`hf-hub:` and `local-dir:` included), timm's weights or a checkpoint."""
    import timm

    pretrained = kwargs.pop("pretrained", checkpoint is None)
    timm_kwargs = {"num_classes": 0, **kwargs}
    if pretrained:
        _check_timm_weights_reachable(name)
    try:
        net = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    except (OSError, ConnectionError) as err:  # huggingface_hub: not cached, offline, unreachable
        if not (pretrained and type(err).__module__.startswith("huggingface_hub")):
            raise
        raise WeightsUnavailableError(_timm_unavailable_message(name, err)) from err
    if isinstance(net, FeatureAPI):  # a T-CoRe model (registered name, or a tcore-format Hub repo)
        if checkpoint is not None:
            net.load_checkpoint(checkpoint)
        return net.eval()
    if checkpoint is not None:
        load_checkpoint(net, checkpoint)
    regs = int(getattr(net, "num_reg_tokens", 0))
    return TimmViTBackbone(net, pos_interp or _default_pos_interp(regs), name=name, model_kwargs=timm_kwargs)


def _timm_unavailable_message(name: str, cause: BaseException) -> str:
    return (f"could not get the weights of the timm model {name!r} ({type(cause).__name__}: {cause}).\n"
            "Three ways to fix it:\n"
            f"  1. on a machine with internet, run `python -c \"import timm; timm.create_model('{name}', "
            "pretrained=True)\"` (fills the Hugging Face cache; then copy ~/.cache/huggingface here or point "
            "HF_HOME at it);\n"
            "  2. pass a local file: checkpoint='path/to/file' in Python, or the file itself as --model on the "
            "command line;\n"
            "  3. check the connection to huggingface.co (HF_HUB_OFFLINE, HF_ENDPOINT, proxy settings).")


def _check_timm_weights_reachable(name: str) -> None:
    """Fail at once, with the fixes, when a timm name's Hub weights can be neither reached nor found
    in the cache (timm's download would retry each file for about 25 s first)."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    if name.startswith("hf-hub:"):
        repo, files = name[len("hf-hub:"):], [CONFIG_NAME]
    else:
        cfg = None if name.startswith("local-dir:") else timm.models.get_pretrained_cfg(name)
        if cfg is None or not cfg.hf_hub_id:
            return
        repo, files = cfg.hf_hub_id, ["model.safetensors", cfg.hf_hub_filename or "pytorch_model.bin"]
    repo_id, _, revision = repo.partition("@")
    cause = hub_unreachable(repo_id, files[0], revision or None)
    if cause is not None and not any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision or None), str)
                                     for f in files):
        raise WeightsUnavailableError(_timm_unavailable_message(name, cause))


def _module_kwargs(model: nn.Module) -> dict[str, Any]:
    """The timm `VisionTransformer` arguments that give `model`'s parameters (names and shapes), read
    off the module: its size (patch, width, depth, heads, MLP ratio, image size), its tokens (class,
    registers, position table with or without their slots), layer scale, biases, norms and head.

    `save_pretrained` checks that they rebuild the same parameters and refuses to save when they
    do not (an MLP or a norm other than timm's defaults, say)."""
    def present(module: Any) -> bool:
        return module is not None and not isinstance(module, nn.Identity)

    def size(value: Any) -> Any:
        return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else int(value)

    kwargs: dict[str, Any] = dict(img_size=size(model.patch_embed.img_size),
                                  num_classes=int(getattr(model, "num_classes", 0)))
    blocks = getattr(model, "blocks", None)
    if not blocks or not hasattr(blocks[0], "attn"):
        return kwargs
    block, dim = blocks[0], int(model.embed_dim)
    patch = size(model.patch_embed.patch_size)
    kwargs.update(patch_size=patch[0] if isinstance(patch, tuple) and len(set(patch)) == 1 else patch,
                  embed_dim=dim, depth=len(blocks), num_heads=int(block.attn.num_heads),
                  qkv_bias=block.attn.qkv.bias is not None, class_token=getattr(model, "cls_token", None) is not None,
                  reg_tokens=int(getattr(model, "num_reg_tokens", 0)),
                  no_embed_class=bool(getattr(model, "no_embed_class", False)),
                  init_values=1.0 if present(getattr(block, "ls1", None)) else None,
                  pre_norm=present(getattr(model, "norm_pre", None)),
                  global_pool=getattr(model, "global_pool", "token"),
                  fc_norm=present(getattr(model, "fc_norm", None)))
    fc1 = getattr(getattr(block, "mlp", None), "fc1", None)
    if isinstance(fc1, nn.Linear):
        kwargs["mlp_ratio"] = fc1.out_features / dim
    return kwargs


@overload
def load_backbone(model: TCoReBackbone | None = None, *, checkpoint: None = None, pos_interp: None = None,
                  device: str | torch.device | None = None, **kwargs: Any) -> TCoReBackbone: ...
@overload
def load_backbone(model: Any = None, *, checkpoint: str | os.PathLike | None = None,
                  pos_interp: PosInterp | None = None, device: str | torch.device | None = None,
                  **kwargs: Any) -> Backbone: ...


def load_backbone(model: Any = None, *, checkpoint: str | os.PathLike | None = None,
                  pos_interp: PosInterp | None = None, device: str | torch.device | None = None,
                  **kwargs: Any) -> Backbone:
    """Any ViT behind tcore's feature API (`patch_tokens`, `forward_features_dict`, `save_pretrained`).

    The one parser of `model=` arguments (propagation, evaluation, command line).

    Args:
        model: None (T-CoRe ViT-S/16, Kinetics-400); a tcore backbone (returned as is); a tcore
            name ("tcore_vitb16", "tcore_vits16.in1k"); a checkpoint file whose architecture is read
            from its keys (official T-CoRe/DINOv2 layout or timm layout, e.g. DINOv2 ViT-S/14
            safetensors); a `save_pretrained` folder or a timm export folder; a Hub repo id
            ("org/name" in tcore's format); a timm model name (`hf-hub:` and `local-dir:` forms
            included, built with `num_classes=0`); or a timm `VisionTransformer` module.
        checkpoint: for a timm name or module: a file loaded strictly into it (instead of timm's
            own weights); for a tcore name: the file to load instead of the release.
        pos_interp: "tcore" (bicubic with antialias) or "dinov2" (without), for timm-layout ViTs
            only. Default by family: "tcore" with registers (T-CoRe, DINOv2-reg), "dinov2" without.
        device: where to put the backbone; None keeps it on the CPU. A device this machine lacks
            is a ValueError listing the available ones (before anything is loaded).
        **kwargs: constructor arguments (timm kwargs for a timm name, e.g. pretrained=False for
            random weights; num_heads= for a checkpoint of a size tcore does not know).

    Returns:
        A `TCoReBackbone` or `TimmViTBackbone` in eval mode.
    """
    target = None if device is None else resolve_device(device)  # checked before the (slow) load
    backbone = _load(model, checkpoint, pos_interp, **kwargs)
    backbone.eval()
    return backbone.to(target) if target is not None else backbone


def _load(model: Any, checkpoint: str | os.PathLike | None, pos_interp: PosInterp | None, **kwargs: Any) -> Backbone:
    if model is None:
        model = "tcore_vits16"
    if isinstance(model, FeatureAPI):
        if checkpoint is not None or pos_interp is not None or kwargs:
            raise InvalidInputError("model: already a tcore backbone; checkpoint=, pos_interp= and other arguments "
                                    "do not apply")
        return model
    if isinstance(model, nn.Module):
        regs = int(getattr(model, "num_reg_tokens", 0))
        if checkpoint is not None:
            load_checkpoint(model, checkpoint)
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        if name is None and type(model) is VisionTransformer:  # built from the class: its arguments say it all
            name = "VisionTransformer"
        return TimmViTBackbone(model, pos_interp or _default_pos_interp(regs), name=name,
                               model_kwargs=_module_kwargs(model))
    if not isinstance(model, (str, os.PathLike)):
        raise InvalidTypeError(f"model: expected a module, a name or a path, got {type(model).__name__}")
    text = str(model)
    arch, _, tag = text.partition(".")
    if arch in _CONSTRUCTORS:
        pretrained = checkpoint if checkpoint is not None else kwargs.pop("pretrained", True)
        return _CONSTRUCTORS[arch](pretrained=pretrained, weights=tag or None, **kwargs)
    path = Path(text).expanduser()
    if path.exists() and not text.startswith(("hf-hub:", "local-dir:")):
        if checkpoint is not None:
            raise InvalidInputError("checkpoint: model= is already a path; give the checkpoint once")
        if path.is_dir():
            return _from_folder(path, pos_interp, **kwargs)
        return _from_file(path, pos_interp, **kwargs)
    if is_repo_id(text):
        return _from_folder(fetch_folder(text), pos_interp, **kwargs)
    import timm

    if not text.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(text.partition(".")[0]):
        raise MissingFileError(f"model={text!r}: no such file, and neither a tcore model "
                               f"({', '.join(_CONSTRUCTORS)}) nor a timm model name")
    return _from_timm(text, checkpoint, pos_interp, **kwargs)
