"""Public constructors: `tcore_vits16`, `tcore_vitb16`, `load_backbone` and the one parser of
`model=` / `pretrained=` arguments (`create_backbone`).

Light at import (torch only): `hubconf.py` imports the constructors from here.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Union

import torch
from torch import nn

if TYPE_CHECKING:
    from .backbone import PosInterp, TCoReBackbone, TimmViTBackbone

__all__ = ["tcore_vits16", "tcore_vitb16", "load_backbone", "create_backbone", "Backbone"]

_logger = logging.getLogger(__name__)

Backbone = Union["TCoReBackbone", "TimmViTBackbone"]
Pretrained = Union[bool, str, os.PathLike, Mapping[str, torch.Tensor], None]


def _resolve_pretrained(arch: str, pretrained: Pretrained, weights: str | None) -> Any:
    """What to load for `pretrained=` / `weights=`: None, a local path, or a state dict."""
    from .hub import fetch_pretrained_folder
    from .weights import _PRETRAINED, download

    if pretrained is None or pretrained is False:
        if weights is not None:
            raise ValueError(f"weights={weights!r} has no effect with pretrained={pretrained}; "
                             "pass pretrained=True to load those weights")
        return None
    if pretrained is True:
        return download(f"{arch}.{weights}" if weights else arch)
    if isinstance(pretrained, Mapping):
        return pretrained
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"pretrained: expected a bool, a path, a Hub repo id or a state dict, "
                        f"got {type(pretrained).__name__}")
    text = str(pretrained)
    if text in _PRETRAINED.get(arch, {}):
        return download(f"{arch}.{text}")
    if Path(text).expanduser().exists():
        return Path(text).expanduser()
    if _looks_like_repo_id(text):
        return fetch_pretrained_folder(text, None, None)
    raise FileNotFoundError(f"pretrained={text!r}: no such file or folder (and not a weights tag of {arch}, "
                            f"nor a Hub repo id 'org/name')")


def _looks_like_repo_id(text: str) -> bool:
    """'org/name' that is not a local path."""
    return (text.count("/") == 1 and ":" not in text and not text.startswith((".", "/", "~"))
            and not Path(text).exists())


def _build(arch: str, pretrained: Pretrained, weights: str | None, **kwargs: Any) -> "TCoReBackbone":
    from .backbone import TCoReBackbone
    from .weights import ARCHITECTURES

    model = TCoReBackbone(**{**ARCHITECTURES[arch], **kwargs})
    source = _resolve_pretrained(arch, pretrained, weights)
    if source is not None:
        from .weights import load_weights_into

        load_weights_into(model, source)
    return model


def tcore_vits16(*, pretrained: Pretrained = True, weights: str | None = None, **kwargs: Any) -> "TCoReBackbone":
    """T-CoRe ViT-S/16 (21.7 M parameters, 4 registers), in eval mode.

    Args:
        pretrained: True for released weights, False for random init, or a local checkpoint
            (official `.pth`, `.safetensors`, `save_pretrained` folder), a Hub repo id or a state dict.
        weights: "k400" (Kinetics-400, 400 epochs; default) or "in1k" (ImageNet-1k, 100 epochs).
        **kwargs: TCoReBackbone arguments (e.g. drop_path_rate for training).

    Example:
        >>> model = torch.hub.load("yafeng19/T-CORE", "tcore_vits16", trust_repo=True)
        >>> tokens = model.patch_tokens(frames)  # (B, H/16, W/16, 384)
    """
    return _build("tcore_vits16", pretrained, weights, **kwargs)


def tcore_vitb16(*, pretrained: Pretrained = True, weights: str | None = None, **kwargs: Any) -> "TCoReBackbone":
    """T-CoRe ViT-B/16 (85.8 M parameters, 4 registers), in eval mode.

    Args:
        pretrained: True for released weights, False for random init, or a local checkpoint
            (official `.pth`, `.safetensors`, `save_pretrained` folder), a Hub repo id or a state dict.
        weights: "k400" (Kinetics-400, 200 epochs; the only release).
        **kwargs: TCoReBackbone arguments.

    Example:
        >>> model = torch.hub.load("yafeng19/T-CORE", "tcore_vitb16", trust_repo=True)
        >>> tokens = model.patch_tokens(frames)  # (B, H/16, W/16, 768)
    """
    return _build("tcore_vitb16", pretrained, weights, **kwargs)


_CONSTRUCTORS = {"tcore_vits16": tcore_vits16, "tcore_vitb16": tcore_vitb16}


# ----------------------------------------------------------------------------- other backbones

# (width, depth) -> heads of the standard ViT sizes (Ti, S, B, L, g), all 64 channels per head
_STANDARD_VIT_HEADS = {(192, 12): 3, (384, 12): 6, (768, 12): 12, (1024, 24): 16, (1536, 40): 24}


def _infer_vit_args(state: Mapping[str, torch.Tensor], source: str, num_heads: int | None = None) -> dict[str, Any]:
    """Architecture of a DINOv2-style (official) or timm-style ViT state dict.

    Weights do not reveal the number of attention heads: it comes from `num_heads`, else from a
    registered tcore architecture of the same shape, else the ViT convention of 64-wide heads
    (with a warning).
    """
    from .weights import ARCHITECTURES, CheckpointError, find_architecture

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
    from .weights import CheckpointError

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


def _default_pos_interp(num_register_tokens: int) -> "PosInterp":
    # DINOv2 with registers and T-CoRe resize with antialias; DINOv2/DINO without registers do not.
    return "tcore" if num_register_tokens else "dinov2"


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    from .weights import convert_state_dict, read_checkpoint

    state = convert_state_dict(read_checkpoint(path), str(path))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _from_file(path: Path, pos_interp: "PosInterp | None", **kwargs: Any) -> Backbone:
    """A backbone whose architecture is read from a checkpoint's keys and shapes."""
    from .backbone import TCoReBackbone, TimmViTBackbone
    from .hub import CONFIG_NAME, from_pretrained
    from .weights import load_weights_into

    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return from_pretrained(path)
    state = _read_state(path)
    num_heads = kwargs.pop("num_heads", None)
    if "register_tokens" in state or "mask_token" in state:  # official DINOv2 / T-CoRe layout
        args = _infer_vit_args(state, str(path), num_heads)
        regs = state["register_tokens"].shape[1] if "register_tokens" in state else 0
        grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
        args = dict(args, num_register_tokens=regs, img_size=grid * args["patch_size"], **kwargs)
        model = TCoReBackbone(**args, pos_interp=pos_interp or _default_pos_interp(regs))
        load_weights_into(model, state)
        return model
    from timm.models.vision_transformer import VisionTransformer

    timm_kwargs = {**_timm_kwargs_from_state(state, str(path), num_heads), **kwargs}
    net = VisionTransformer(**timm_kwargs)
    _load_timm_strict(net, state, str(path))
    interp = pos_interp or _default_pos_interp(timm_kwargs["reg_tokens"])
    _logger.info("%s: timm ViT %s, pos_interp=%s", path, timm_kwargs, interp)
    return TimmViTBackbone(net, interp, name="VisionTransformer", model_kwargs=timm_kwargs)


def _load_timm_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    from .weights import CheckpointError

    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{source}: does not match the timm ViT (strict loading): missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}, shape mismatch {sorted(wrong)[:8]}")
    model.load_state_dict(state, strict=True)


def load_backbone(model: Any, weights: Any = None, pos_interp: "PosInterp | None" = None,
                  **kwargs: Any) -> Backbone:
    """Any ViT behind tcore's feature API (`patch_tokens`, `forward_features`, `save_pretrained`).

    Args:
        model: a tcore backbone (returned as is); a timm `VisionTransformer` module; a timm model
            name (built with `num_classes=0`); a tcore name ("tcore_vits16.in1k"); or a checkpoint
            file / `save_pretrained` folder whose architecture is read from its keys (official
            DINOv2/T-CoRe layout or timm layout, e.g. DINOv2 ViT-S/14 safetensors).
        weights: for a timm name or module: a checkpoint file loaded strictly into it; None with a
            timm name loads timm's own pretrained weights; False keeps random weights.
        pos_interp: "tcore" (bicubic + antialias) or "dinov2" (bicubic, no antialias). Default: by
            family - "tcore" for ViTs with registers (T-CoRe, DINOv2-reg), "dinov2" without. timm's
            own dynamic resize is never used. Recorded in `config.json` by `save_pretrained`.
        **kwargs: extra constructor arguments (timm kwargs for a timm name).

    Returns:
        A `TCoReBackbone` or `TimmViTBackbone` in eval mode.
    """
    from .backbone import TimmViTBackbone, _FeatureAPI

    if isinstance(model, _FeatureAPI):
        if weights is not None or pos_interp is not None:
            raise ValueError("model: already a tcore backbone; weights= and pos_interp= do not apply")
        return model
    if isinstance(model, nn.Module):
        regs = int(getattr(model, "num_reg_tokens", 0))
        if weights not in (None, False):
            _load_timm_strict(model, _read_state(Path(weights)), str(weights))
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        return TimmViTBackbone(model, pos_interp or _default_pos_interp(regs), name=name,
                               model_kwargs=_module_kwargs(model))
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model: expected a module, a name or a path, got {type(model).__name__}")
    text = str(model)
    arch = text.partition(".")[0]
    if arch in _CONSTRUCTORS:
        tag = text.partition(".")[2] or None
        return _CONSTRUCTORS[arch](pretrained=True if weights is None else weights, weights=tag, **kwargs)
    path = Path(text).expanduser()
    if path.exists():
        if weights is not None:
            raise ValueError("weights: give either a checkpoint path as model= or weights=, not both")
        return _from_file(path, pos_interp, **kwargs)
    if _looks_like_repo_id(text):
        from .hub import from_pretrained

        return from_pretrained(text)
    import timm

    if not timm.is_model(text.partition(".")[0]):
        raise FileNotFoundError(f"model={text!r}: no such file, and neither a tcore model "
                                f"({', '.join(_CONSTRUCTORS)}) nor a timm model name")
    timm_kwargs = {"num_classes": 0, **kwargs}
    net = timm.create_model(text, pretrained=weights is None, **timm_kwargs)
    if weights not in (None, False):
        _load_timm_strict(net, _read_state(Path(weights)), str(weights))
    regs = int(getattr(net, "num_reg_tokens", 0))
    return TimmViTBackbone(net, pos_interp or _default_pos_interp(regs), name=text, model_kwargs=timm_kwargs)


def _module_kwargs(model: nn.Module) -> dict[str, Any]:
    """Enough timm kwargs to rebuild `model`'s state dict layout with its architecture name."""
    img = model.patch_embed.img_size
    return dict(img_size=tuple(int(s) for s in img) if isinstance(img, (tuple, list)) else int(img),
                num_classes=int(getattr(model, "num_classes", 0)))


def create_backbone(model: Any = None, device: str | torch.device | None = None) -> Backbone:
    """The one parser of `model=` arguments (propagation, evaluation, CLI).

    Args:
        model: None (T-CoRe ViT-S/16, Kinetics-400), a tcore name ("tcore_vitb16",
            "tcore_vits16.in1k"), a checkpoint file or `save_pretrained` folder, a Hub repo id
            ("org/name" holding config.json + model.safetensors), or a module (a tcore backbone or
            a timm ViT).
        device: where to put it; None keeps it where it is.

    Returns:
        A tcore backbone in eval mode.
    """
    backbone = tcore_vits16(pretrained=True) if model is None else load_backbone(model)
    backbone.eval()
    return backbone.to(device) if device is not None else backbone
