"""The Hugging Face format of tcore backbones, and exports that stock timm loads.

tcore format (what `save_pretrained` writes and `from_pretrained` reads, through
`huggingface_hub.PyTorchModelHubMixin`): `config.json` (architecture class, constructor
arguments, timm's preprocessing cfg, provenance), `model.safetensors` and a generated `README.md`
model card. Folders come from disk or from a Hub repo through the Hugging Face cache
(HF_HUB_OFFLINE honoured).

timm format (`export_for_timm`, `tcore convert --format timm`): timm's own `config.json`
(`architecture` = a stock timm ViT, `model_args`, `pretrained_cfg`) + `model.safetensors`, which
`timm.create_model("local-dir:DIR" or "hf-hub:org/repo", pretrained=True)` loads without tcore.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.constants import CONFIG_NAME, SAFETENSORS_SINGLE_FILE
from timm.models import VisionTransformer, save_for_hf
from torch import nn

from ._version import __version__
from .architecture import ARCHITECTURES, TCoReViT, TimmViT
from .checkpoint import check_state_dict, to_timm_state_dict
from .errors import CheckpointError
from .files import write_atomic
from .weights import PAPER, Preprocessing, fetch_file, get_pretrained, list_models

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT_VERSION",
    "TIMM_ARCHITECTURES",
    "backbone_config",
    "export_for_timm",
    "fetch_folder",
    "is_repo_id",
    "model_card",
    "read_config",
    "to_stock_timm",
    "weights_file",
    "write_weights",
]

WEIGHTS_NAME = SAFETENSORS_SINGLE_FILE
FORMAT_VERSION = 2  # 1: official parameter names (read too: the loader converts them)
# the stock timm architecture a T-CoRe ViT of that width is exported as; `model_args` in the export
# carry the actual sizes (patch 16, ...), so other widths (tests' tiny ViT) use the first name too
TIMM_ARCHITECTURES = {384: "vit_small_patch14_reg4_dinov2", 768: "vit_base_patch14_reg4_dinov2"}


# --------------------------------------------------------------------------------- tcore format

def _preprocessing(model: nn.Module) -> dict[str, Any]:
    """timm's preprocessing keys of a backbone: its pretrained cfg's, else (a T-CoRe ViT built
    without one) T-CoRe's."""
    cfg = model._preprocessing()
    default = asdict(Preprocessing()) if isinstance(model, TCoReViT) else {}
    return {k: cfg.get(k, default.get(k)) for k in asdict(Preprocessing()) if cfg.get(k, default.get(k)) is not None}


def backbone_config(model: nn.Module) -> dict[str, Any]:
    """The `config.json` of a backbone: what `from_pretrained` needs to rebuild it."""
    if isinstance(model, TCoReViT):
        architecture = "TCoReBackbone"
    elif isinstance(model, TimmViT):
        if not model.timm_name:
            raise ValueError("model: this timm backbone was built from a module whose timm name is unknown; "
                             "build it with tcore.load_backbone('<timm name>', ...) to save it")
        architecture = "TimmViTBackbone"
    else:
        raise TypeError(f"model: expected a tcore backbone, got {type(model).__name__}")
    return {
        "architecture": architecture,
        "model_args": model.arch,
        "pretrained_cfg": _preprocessing(model),
        "pos_interp": model.pos_interp,
        "patch_size": model.patch_size,
        "num_features": int(model.embed_dim),
        "format_version": FORMAT_VERSION,
        "tcore_version": __version__,
    }


def write_weights(state: Mapping[str, torch.Tensor], folder: str | os.PathLike) -> Path:
    """`folder/model.safetensors` from a state dict (CPU, contiguous), written atomically."""
    from safetensors.torch import save_file

    path = Path(folder) / WEIGHTS_NAME
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    return path


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """`folder/config.json`, checked to be a format this tcore reads.

    Raises:
        FileNotFoundError: no config.json. CheckpointError: a newer format, or not JSON.
    """
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME}; expected a folder written by save_pretrained()")
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config['format_version']} is newer than this tcore "
                              f"({__version__}) reads; upgrade tcore")
    return config


def weights_file(folder: str | os.PathLike, architecture: str) -> Path:
    """The weights of a `save_pretrained` folder that must hold an `architecture` backbone.

    Raises:
        CheckpointError: the folder holds another kind of backbone (the message says which loader).
    """
    held = read_config(folder).get("architecture")
    if held != architecture:
        raise CheckpointError(f"{folder}: holds a {held} backbone, not a {architecture}; use tcore.load_backbone()")
    return Path(folder) / WEIGHTS_NAME


def is_repo_id(text: str) -> bool:
    """The repository-id rule of tcore: 'org/name' that is not a local path (one slash, no scheme,
    no leading '.', '/' or '~', nothing of that name on disk)."""
    return (text.count("/") == 1 and ":" not in text and not text.startswith((".", "/", "~"))
            and not Path(text).exists())


def fetch_folder(repo_id_or_dir: str | os.PathLike, *, revision: str | None = None,
                 cache_dir: str | None = None, force_download: bool = False) -> Path:
    """A local folder holding `config.json` + `model.safetensors`: the folder itself, or a Hub repo's
    snapshot in the Hugging Face cache.

    Raises:
        FileNotFoundError: neither a folder nor a repo id `org/name`.
        WeightsUnavailableError: a Hub repo that is offline and not cached (says how to fix it).
    """
    local = Path(repo_id_or_dir).expanduser()
    if local.is_dir():
        return local
    text = str(repo_id_or_dir)
    if not is_repo_id(text):
        raise FileNotFoundError(f"{text}: not a folder, and not a Hub repo id of the form 'org/name'")
    paths = [fetch_file(text, name, revision=revision, cache_dir=cache_dir, force_download=force_download)
             for name in (CONFIG_NAME, WEIGHTS_NAME)]
    if paths[0].parent != paths[1].parent:
        raise CheckpointError(f"{text}: config and weights resolved to different snapshots")
    return paths[0].parent


# ----------------------------------------------------------------------------------- model card

def _scores_table(highlight: str | None) -> str:
    rows = ["| weights | data | epochs | DAVIS-2017 J&F | J | F | VIP mIoU | JHMDB PCK@0.1 | PCK@0.2 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in list_models():
        e = get_pretrained(name)
        s = e.scores
        label = f"**{name}** (this model)" if name == highlight else name
        rows.append(f"| {label} | {e.data} | {e.epochs} | {s.davis_jf} | {s.davis_j} | {s.davis_f} | "
                    f"{s.vip_miou} | {s.jhmdb_pck01} | {s.jhmdb_pck02} |")
    return "\n".join(rows)


def _architecture_line(args: Mapping[str, Any]) -> str:
    name = next((n for n, a in ARCHITECTURES.items() if a == {k: v for k, v in args.items() if k != "num_classes"}),
                None)
    return (f"{'`' + name + '`: ' if name and not name.startswith('_') else ''}ViT with patch {args['patch_size']}, "
            f"width {args['embed_dim']}, {args['depth']} blocks, {args['num_heads']} heads, "
            f"{args['num_register_tokens']} register tokens, LayerScale")


def model_card(card_data: ModelCardData, config: Mapping[str, Any], repo_id: str | None = None) -> ModelCard:
    """The README.md of a saved tcore backbone: what it is, the paper's numbers, usage, provenance.

    Args:
        card_data: the card's YAML header (library, licence, tags, ...).
        config: the folder's `config.json` (with `source` / `source_sha256` when converted from a file,
            `release` ("tcore_vits16.k400") when the weights are a release).
        repo_id: the Hub repo it is pushed to, for the usage snippet (default: a placeholder).
    """
    where = repo_id or "path/or/org-repo"
    release = config.get("release")
    if config["architecture"] == "TCoReBackbone":
        what = f"A T-CoRe backbone: {_architecture_line(config['model_args'])}."
        use = (f"import tcore\n\nmodel = tcore.TCoReBackbone.from_pretrained(\"{where}\")\n"
               "tokens = model.patch_tokens(frames)  # (B, H/16, W/16, D), frames ImageNet-normalised\n"
               "masks = tcore.propagate_masks(\"frames/\", \"00000.png\", model=model)")
    else:
        what = f"A timm ViT (`{config['model_args']['timm_name']}`) behind tcore's feature API."
        use = (f"import tcore\n\nmodel = tcore.TimmViTBackbone.from_pretrained(\"{where}\")\n"
               "tokens = model.patch_tokens(frames)")
    if config.get("source"):
        digest = f", sha256 `{config['source_sha256']}`" if config.get("source_sha256") else ""
        provenance = f"Converted from `{config['source']}`{digest} by tcore {config['tcore_version']}."
    elif release:
        e = get_pretrained(release)
        provenance = (f"The released `{release}` weights ({e.repo_id}/{e.filename}), saved by tcore "
                      f"{config['tcore_version']}.")
    else:
        provenance = f"Saved by tcore {config['tcore_version']}."
    pre = config.get("pretrained_cfg", {})
    body = f"""
# {release or "T-CoRe backbone"}

{what} From "{PAPER['name']}" ([paper]({PAPER['url']}), [official code]({PAPER['code']})).
Dense features for label propagation (video object segmentation, pose and part tracking).

## Use

```python
{use}
```

Input: RGB in [0, 1] normalised with mean {pre.get('mean')} and std {pre.get('std')}; height and width
multiples of {config['patch_size']} (any size: position embeddings are resized bicubically with antialias).

## The paper's numbers (label propagation, percent)

{_scores_table(release)}

## Provenance

{provenance} Files: `config.json` (architecture and preprocessing), `model.safetensors`
(format version {config['format_version']}). Loading is strict: any missing, unexpected or mis-shaped
tensor is an error.
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


# ----------------------------------------------------------------------------------- timm format

def _stock_timm_args(model: TCoReViT) -> dict[str, Any]:
    a = model.arch
    return dict(img_size=a["img_size"], patch_size=a["patch_size"], embed_dim=a["embed_dim"], depth=a["depth"],
                num_heads=a["num_heads"], mlp_ratio=a["mlp_ratio"], reg_tokens=a["num_register_tokens"],
                init_values=1e-5, no_embed_class=True, dynamic_img_size=True, num_classes=a.get("num_classes", 0))


def to_stock_timm(model: TCoReViT) -> tuple[str, VisionTransformer]:
    """(stock architecture name, a stock timm ViT holding `model`'s weights) - same features.

    The class token's position is folded into `cls_token` and the mask token dropped: exact for
    inference, not a training parameterisation.
    """
    name = TIMM_ARCHITECTURES.get(model.arch["embed_dim"], TIMM_ARCHITECTURES[384])
    args = _stock_timm_args(model)
    net = timm.create_model(name, pretrained=False, **args)
    state = to_timm_state_dict(model.state_dict())
    check_state_dict(net, state, f"{type(model).__name__} export")
    net.load_state_dict(state, strict=True)
    net.pretrained_cfg = _timm_pretrained_cfg(model, name)
    return name, net.eval()


def _timm_pretrained_cfg(model: TCoReViT, name: str) -> dict[str, Any]:
    """The export's pretrained cfg: T-CoRe's preprocessing and provenance, no download source."""
    cfg = model._preprocessing()
    return dict(
        architecture=name, num_classes=model.num_classes, fixed_input_size=False, first_conv="patch_embed.proj",
        classifier="head", **_preprocessing(model), license=cfg.get("license", "apache-2.0"),
        origin_url=PAPER["code"], paper_name=PAPER["name"], paper_ids=f"arXiv:{PAPER['arxiv']}",
        description="T-CoRe ViT exported by tcore for stock timm (class position folded into cls_token)")


def export_for_timm(model: TCoReViT, folder: str | os.PathLike, **metadata: Any) -> Path:
    """Write a folder that `timm.create_model("local-dir:FOLDER", pretrained=True)` loads, without tcore.

    Args:
        model: a T-CoRe backbone.
        folder: created if needed; gets timm's `config.json` + `model.safetensors`.
        **metadata: JSON-serialisable extras stored at the top of `config.json` (e.g. source, source_sha256).

    Returns:
        The folder.
    """
    _, net = to_stock_timm(model)
    save_for_hf(net, str(folder), model_args=_stock_timm_args(model), safe_serialization=True,
                model_config={**metadata, "tcore_version": __version__})
    return Path(folder)
