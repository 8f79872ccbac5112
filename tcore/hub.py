"""The Hugging Face format of tcore backbones: one `config.json` that both tcore and timm read.

A saved folder holds `config.json`, `model.safetensors` and a `README.md` model card. The
config is timm's (`architecture`, a timm model name; `num_classes`, `num_features`,
`global_pool`, `model_args`, `pretrained_cfg`) with tcore's fields beside it (`backbone`,
`pos_interp`, `format_version`, `tcore_version`, and provenance such as `source`,
`source_sha256`, `release`). So `TCoReBackbone.from_pretrained(dir or "org/repo")`,
`timm.create_model("local-dir:DIR" or "hf-hub:org/repo", pretrained=True)` (after `import
tcore`, which registers the `tcore_*` names) and `tcore.load_backbone` build the same module
from it, a fine-tuned head included.

Two kinds of folder are written, with the same schema:
- `save_pretrained` (and `tcore convert`): `architecture` is tcore's registered name
  (`tcore_vits16`, ...) and the weights keep the training parameterisation (`cls_pos_embed`,
  `mask_token`): lossless, but timm needs tcore imported to know the name.
- `export_for_timm` (`tcore convert --format timm`): `architecture` is a stock timm ViT
  (`vit_small_patch14_reg4_dinov2`, ...) and the class position is folded into `cls_token`, the
  mask token dropped (stock timm has neither parameter): stock timm loads it without tcore, with
  the same features; tcore reads it through `load_backbone` as a timm ViT.

Folders come from disk or from a Hub repo through the Hugging Face cache (HF_HUB_OFFLINE honoured).
"""
from __future__ import annotations

import json
import os
import types
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.constants import CONFIG_NAME, SAFETENSORS_SINGLE_FILE
from timm.models import VisionTransformer
from torch import nn

from ._version import __version__
from .architecture import ARCHITECTURES, HEAD_ARGS, TCoReArgs, TCoReViT, TimmViT
from .checkpoint import check_state_dict, to_timm_state_dict
from .errors import CheckpointError, InvalidInputError, InvalidTypeError, MissingFileError
from .files import write_atomic, write_text_atomic
from .weights import PAPER, Preprocessing, fetch_file, get_pretrained, list_models

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT_VERSION",
    "BACKBONES",
    "INSTALL",
    "TIMM_ARCHITECTURES",
    "backbone_config",
    "backbone_kind",
    "export_for_timm",
    "fetch_folder",
    "is_repo_id",
    "model_card",
    "read_config",
    "to_stock_timm",
    "write_weights",
]

WEIGHTS_NAME = SAFETENSORS_SINGLE_FILE
# 3: timm's config.json with tcore's fields beside it; 2: `architecture` named the tcore class;
# 1: official parameter names in the weights (all read: older configs are upgraded when read)
FORMAT_VERSION = 3
BACKBONES = ("TCoReBackbone", "TimmViTBackbone")  # the `backbone` of a tcore folder
INSTALL = 'pip install "tcore @ git+https://github.com/yafeng19/T-CORE"'  # the PyPI name is another project's
# the stock timm architecture a T-CoRe ViT of that width is exported as; `model_args` in the export
# carry the actual sizes (patch 16, ...), so other widths (tests' tiny ViT) use the first name too
TIMM_ARCHITECTURES = {384: "vit_small_patch14_reg4_dinov2", 768: "vit_base_patch14_reg4_dinov2"}
# timm's pretrained-cfg keys that say where weights come from: never saved (a folder is its own source)
_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag")
_PRETRAINED_CFG_KEYS = {"input_size", "test_input_size", "min_input_size", "fixed_input_size", "interpolation",
                        "crop_pct", "test_crop_pct", "crop_mode", "mean", "std", "num_classes", "label_offset",
                        "label_names", "label_descriptions", "pool_size", "test_pool_size", "first_conv",
                        "classifier", "license", "description", "origin_url", "paper_name", "paper_ids", "notes",
                        "custom_load"}


# ------------------------------------------------------------------------------------ writing

def _preprocessing(model: nn.Module) -> dict[str, Any]:
    """timm's preprocessing keys of a backbone: its pretrained cfg's, else (a T-CoRe ViT built
    without one) T-CoRe's."""
    cfg = model._preprocessing()
    default = asdict(Preprocessing()) if isinstance(model, TCoReViT) else {}
    return {k: cfg.get(k, default.get(k)) for k in asdict(Preprocessing()) if cfg.get(k, default.get(k)) is not None}


def _timm_pretrained_cfg(model: nn.Module, num_classes: int, description: str) -> dict[str, Any]:
    """The `pretrained_cfg` a saved folder carries: preprocessing, head, licence, paper; no source."""
    cfg = {k: v for k, v in model._preprocessing().items() if k in _PRETRAINED_CFG_KEYS and k not in _SOURCE_KEYS}
    return {**cfg, **_preprocessing(model), "num_classes": num_classes, "fixed_input_size": False,
            "first_conv": "patch_embed.proj", "classifier": "head", "license": cfg.get("license", "apache-2.0"),
            "origin_url": PAPER["code"], "paper_name": PAPER["name"], "paper_ids": f"arXiv:{PAPER['arxiv']}",
            "description": description}


def _architecture_name(args: Mapping[str, Any]) -> str | None:
    """The public T-CoRe architecture these arguments build, if any."""
    public = {n: a for n, a in ARCHITECTURES.items() if not n.startswith("_")}
    return next((n for n, a in public.items() if all(args.get(k) == v for k, v in a.items())), None)


def _registered_name(args: Mapping[str, Any]) -> str:
    """The tcore name timm builds a T-CoRe ViT of these arguments with (model_args give the sizes)."""
    return _architecture_name(args) or ("tcore_vitb16" if args.get("embed_dim") == 768 else "tcore_vits16")


def backbone_config(model: nn.Module) -> dict[str, Any]:
    """The `config.json` of a backbone: timm's keys (what `timm.create_model` rebuilds it from) and
    tcore's (what `from_pretrained` checks)."""
    if isinstance(model, TCoReViT):
        args = model.arch
        backbone, architecture, net = "TCoReBackbone", _registered_name(args), model
        description = "T-CoRe ViT saved by tcore (timm needs `import tcore` for this architecture)"
    elif isinstance(model, TimmViT):
        if not model.timm_name:
            raise InvalidInputError("model: this timm backbone was built from a module whose timm name is unknown; "
                                    "build it with tcore.load_backbone('<timm name>', ...) to save it")
        args = model.timm_kwargs
        backbone, architecture, net = "TimmViTBackbone", model.timm_name, model.model
        description = f"timm {model.timm_name} behind tcore's feature API"
    else:
        raise InvalidTypeError(f"model: expected a tcore backbone, got {type(model).__name__}")
    num_classes = int(getattr(net, "num_classes", 0))
    config = {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": int(model.embed_dim),
        "global_pool": getattr(net, "global_pool", "token"),
        "model_args": args,
        "pretrained_cfg": _timm_pretrained_cfg(model, num_classes, description),
        "backbone": backbone,
        "pos_interp": model.pos_interp,
        "format_version": FORMAT_VERSION,
        "tcore_version": __version__,
    }
    release = getattr(model, "release", None)
    return {**config, "release": release} if release else config


def write_weights(state: Mapping[str, torch.Tensor], folder: str | os.PathLike) -> Path:
    """`folder/model.safetensors` from a state dict (CPU, contiguous), written atomically with the
    umask's permissions (safetensors' own `save_file` replaces the file with a 0600 one)."""
    from safetensors.torch import save

    path = Path(folder) / WEIGHTS_NAME
    data = save({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, metadata={"format": "pt"})
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


# ------------------------------------------------------------------------------------ reading

def _json_object(folder: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise MissingFileError(f"{folder}: no {CONFIG_NAME}; expected a folder written by save_pretrained()")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); write it again with save_pretrained()") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object (the keys architecture, model_args, ...), "
                              f"got a JSON {type(config).__name__}; write it again with save_pretrained()")
    return path, config


def backbone_kind(folder: str | os.PathLike) -> str | None:
    """The tcore backbone a folder's `config.json` holds ("TCoReBackbone" or "TimmViTBackbone"), or
    None for another model's config (a stock timm export)."""
    _, config = _json_object(folder)
    kind = config.get("backbone", config.get("architecture"))  # format 2 named the class in `architecture`
    return kind if kind in BACKBONES else None


def _upgrade(config: dict[str, Any]) -> dict[str, Any]:
    """A format 1 or 2 config in format 3's shape (the tcore class moves from `architecture` to `backbone`)."""
    if config.get("architecture") not in BACKBONES:
        return config
    backbone, args = config["architecture"], config.get("model_args")
    if backbone == "TimmViTBackbone" and isinstance(args, dict) and "timm_name" in args:
        return {**config, "backbone": backbone, "architecture": args["timm_name"],
                "model_args": args.get("timm_kwargs", {})}
    return {**config, "backbone": backbone, "architecture": _registered_name(args if isinstance(args, dict) else {})}


def _fits(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits a type hint (int, float, bool, str, None, tuples and unions of them)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(tp))
    if origin is tuple:
        items = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and len(value) == len(items) and all(map(_fits, value, items))
    if tp is type(None):
        return value is None
    if tp in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if tp is float else tp)


def _check_tcore_args(path: Path, args: Mapping[str, Any]) -> None:
    hints = {**typing.get_type_hints(TCoReArgs), **HEAD_ARGS}
    unknown = sorted(set(args) - set(hints))
    if unknown:
        raise CheckpointError(f"{path}: model_args has unknown key(s) {unknown}; a TCoReBackbone takes "
                              f"{sorted(hints)} (the file was written by another program or edited)")
    for key, value in args.items():
        if not _fits(value, hints[key]):
            expected = getattr(hints[key], "__name__", str(hints[key]))
            raise CheckpointError(f"{path}: model_args.{key} is {value!r} ({type(value).__name__}); "
                                  f"expected {expected}")


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """`folder/config.json` of a tcore backbone, checked, in the current format's shape.

    Raises:
        MissingFileError: no config.json. CheckpointError: not JSON, not an object, a newer
        format, not a tcore backbone, or a `model_args` that is missing, mistyped or holds a key
        the backbone does not take (the message names the file and the key).
    """
    path, config = _json_object(folder)
    version = config.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version is {version!r}; expected an int")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version} is newer than this tcore ({__version__}) reads; "
                              "upgrade tcore")
    config = _upgrade(config)
    backbone = config.get("backbone")
    if backbone not in BACKBONES:
        found = f"'backbone' is {backbone!r}" if "backbone" in config else f"no 'backbone' key (keys: {sorted(config)})"
        raise CheckpointError(f"{path}: not a tcore backbone ({found}; expected one of {list(BACKBONES)}); "
                              "a stock timm folder loads with tcore.load_backbone(folder) or timm")
    args = config.get("model_args")
    if not isinstance(args, dict):
        got = "missing" if args is None else f"a {type(args).__name__}"
        raise CheckpointError(f"{path}: model_args is {got}; expected an object of constructor arguments")
    if backbone == "TCoReBackbone":
        _check_tcore_args(path, args)
    elif not isinstance(config.get("architecture"), str):
        raise CheckpointError(f"{path}: architecture is {config.get('architecture')!r}; expected a timm model name")
    if config.get("pos_interp", "tcore") not in ("tcore", "dinov2"):
        raise CheckpointError(f"{path}: pos_interp is {config['pos_interp']!r}; expected 'tcore' or 'dinov2'")
    if not isinstance(config.get("pretrained_cfg", {}), dict):
        raise CheckpointError(f"{path}: pretrained_cfg is a {type(config['pretrained_cfg']).__name__}; "
                              "expected an object")
    return config


def is_repo_id(text: str) -> bool:
    """The repository-id rule of tcore: 'org/name' that is not a local path (one slash, no scheme,
    no leading '.', '/' or '~', nothing of that name on disk). Whether the name is a valid one is
    checked when it is fetched."""
    return (text.count("/") == 1 and ":" not in text and not text.startswith((".", "/", "~"))
            and not Path(text).exists())


def fetch_folder(repo_id_or_dir: str | os.PathLike, *, revision: str | None = None,
                 cache_dir: str | None = None, force_download: bool = False, local_files_only: bool = False,
                 token: str | bool | None = None) -> Path:
    """A local folder holding `config.json` + `model.safetensors`: the folder itself, or a Hub repo's
    snapshot in the Hugging Face cache.

    Args:
        repo_id_or_dir: a folder, or a Hub repo id "org/name".
        revision, cache_dir, force_download, local_files_only, token: as `huggingface_hub.hf_hub_download`.

    Raises:
        MissingFileError: neither a folder nor a repo id `org/name`.
        InvalidInputError: an 'org/name' that is not a valid Hub repo id.
        WeightsUnavailableError: a Hub repo that is offline and not cached (says how to fix it).
    """
    local = Path(repo_id_or_dir).expanduser()
    if local.is_dir():
        return local
    text = str(repo_id_or_dir)
    if not is_repo_id(text):
        raise MissingFileError(f"{text}: not a folder, and not a Hub repo id of the form 'org/name'")
    paths = [fetch_file(text, name, revision=revision, cache_dir=cache_dir, force_download=force_download,
                        local_files_only=local_files_only, token=token)
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


_PAPER_SOURCE = f"reported by the paper ({PAPER['name']}, Tables 1 and 2), not measured on these files"


def _paper_results(release: str) -> list[EvalResult]:
    """The paper's label-propagation numbers of a release, as a card's `model-index`, marked as the paper's."""
    s = get_pretrained(release).scores
    rows = [("video-object-segmentation", "Semi-supervised video object segmentation (label propagation)",
             "davis-2017", "DAVIS-2017 val", "val", [("J&F", s.davis_jf), ("J", s.davis_j), ("F", s.davis_f)]),
            ("image-segmentation", "Human part propagation", "vip", "VIP", "val", [("mIoU", s.vip_miou)]),
            ("keypoint-detection", "Pose keypoint propagation", "jhmdb", "JHMDB", "split 1 test",
             [("PCK@0.1", s.jhmdb_pck01), ("PCK@0.2", s.jhmdb_pck02)])]
    return [EvalResult(task_type=task, task_name=task_name, dataset_type=dtype, dataset_name=dname, dataset_split=split,
                       metric_type=metric.lower(), metric_name=metric, metric_value=value, verified=False,
                       source_name=_PAPER_SOURCE, source_url=PAPER["url"])
            for task, task_name, dtype, dname, split, metrics in rows for metric, value in metrics]


def _card_data(base: ModelCardData, config: Mapping[str, Any]) -> ModelCardData:
    """The card's YAML header: `base`, plus what the release this model comes from says."""
    data = ModelCardData(**base.to_dict())
    release = config.get("release")
    if release:
        entry = get_pretrained(release)
        data.base_model = entry.repo_id
        data.datasets = list(entry.hub_datasets)
        data.model_name = release
        data.eval_results = _paper_results(release)
    return data


def _use_snippet(config: Mapping[str, Any], where: str, on_hub: bool) -> str:
    """Python that runs as written: load the model, then dense features of a stand-in frame."""
    timm_name = f"hf-hub:{where}" if on_hub else f"local-dir:{where}"
    if config.get("backbone") is None:  # a stock timm export
        return ("import timm\nimport torch\n\n"
                f"model = timm.create_model({json.dumps(timm_name)}, pretrained=True).eval()\n"
                "x = torch.rand(1, 3, 480, 880)  # stand-in for a frame: RGB in [0, 1], sides multiples of 16\n"
                "x = (x - torch.tensor(model.pretrained_cfg[\"mean\"]).view(3, 1, 1)) / "
                "torch.tensor(model.pretrained_cfg[\"std\"]).view(3, 1, 1)\n"
                "with torch.no_grad():\n"
                "    tokens = model.forward_features(x)  # (1, 1 + 4 + 30 * 55, D): CLS, registers, patches\n")
    cls = config["backbone"]
    lines = ["import tcore", "import torch", "", f"model = tcore.{cls}.from_pretrained({json.dumps(where)})",
             "x = torch.rand(1, 3, 480, 880)  # stand-in for a frame: RGB in [0, 1], sides multiples of the patch",
             "x = (x - torch.tensor(model.mean).view(3, 1, 1)) / torch.tensor(model.std).view(3, 1, 1)",
             "with torch.no_grad():",
             "    tokens = model.patch_tokens(x)  # (1, H/p, W/p, D) dense features"]
    if cls == "TCoReBackbone":
        lines += ["", "# the same model through timm (importing tcore registers its architectures)", "import timm",
                  "", f"same = timm.create_model({json.dumps(timm_name)}, pretrained=True).eval()"]
    return "\n".join(lines) + "\n"


def model_card(card_data: ModelCardData, config: Mapping[str, Any], where: str | None = None,
               on_hub: bool = False) -> ModelCard:
    """The README.md of a saved backbone: what it is, install, usage that runs as written, the
    paper's numbers, provenance.

    Args:
        card_data: the card's YAML header (library, licence, tags, ...), completed here from the release.
        config: the folder's `config.json` (with `source` / `source_sha256` when converted from a
            file, `release` ("tcore_vits16.k400") when the weights come from a release: the card
            then has `base_model`, `datasets` and a `model-index` of the paper's numbers).
        where: what the usage snippet loads: the Hub repo id, or the folder.
        on_hub: `where` is a Hub repo id.
    """
    where = where or "path/to/folder"
    release = config.get("release")
    stock = config.get("backbone") is None
    args = config["model_args"]
    if stock or config["backbone"] == "TCoReBackbone":
        head = f", a {config['num_classes']}-class head" if config.get("num_classes") else ""
        name = "" if stock else f"`{_architecture_name(args)}`: " if _architecture_name(args) else ""
        registers = args.get("num_register_tokens", args.get("reg_tokens"))  # tcore's name, stock timm's
        what = (f"A T-CoRe backbone ({name}ViT with patch {args['patch_size']}, width {args['embed_dim']}, depth "
                f"{args['depth']}, {args['num_heads']} heads, {registers} register tokens, LayerScale{head}).")
    else:
        what = f"A timm ViT (`{config['architecture']}`) behind tcore's feature API."
    if stock:
        install = ("Stock timm reads this folder; tcore is not needed (`pip install timm`). It holds a T-CoRe ViT "
                   "exported by tcore: the class position is folded into `cls_token`, the mask token left out.")
    else:
        install = (f"```bash\n{INSTALL}\n```\n\n(The project named `tcore` on PyPI is another one: install from "
                   "the repository.)")
    if config.get("source"):
        digest = f", sha256 `{config['source_sha256']}`" if config.get("source_sha256") else ""
        provenance = f"Converted from `{config['source']}`{digest} by tcore {config['tcore_version']}."
    elif release:
        e = get_pretrained(release)
        provenance = (f"Started from the released `{release}` weights ({e.repo_id}/{e.filename}), saved by tcore "
                      f"{config['tcore_version']}.")
    else:
        provenance = f"Saved by tcore {config['tcore_version']}."
    pre = config.get("pretrained_cfg", {})
    body = f"""
# {release or "T-CoRe backbone"}

{what} From "{PAPER['name']}" ([paper]({PAPER['url']}), [official code]({PAPER['code']})).
Dense features for label propagation (video object segmentation, pose and part tracking).

## Install

{install}

## Use

```python
{_use_snippet(config, where, on_hub)}```

Input: RGB in [0, 1] normalised with mean {pre.get('mean')} and std {pre.get('std')}; height and width
multiples of the patch size (any size: position embeddings are resized bicubically with antialias).
timm's data config (`timm.data.resolve_model_data_config(model)`) keeps the whole frame: it is resized
to {tuple(pre.get('input_size', (3, 480, 880)))[1:]} without a crop ("squash", the paper's DAVIS size).

## The paper's numbers (label propagation, percent, as reported by the paper)

{_scores_table(release)}

## Provenance

{provenance} Files: `config.json` (timm's keys and tcore's), `model.safetensors` (format version
{config['format_version']}). Loading is strict: any missing, unexpected, mis-shaped or non-finite
tensor is an error.
"""
    return ModelCard(f"---\n{_card_data(card_data, config).to_yaml()}\n---\n{body}")


# ----------------------------------------------------------------------------------- timm format

def _stock_timm_args(model: TCoReViT) -> dict[str, Any]:
    a = model.arch
    return dict(img_size=a["img_size"], patch_size=a["patch_size"], embed_dim=a["embed_dim"], depth=a["depth"],
                num_heads=a["num_heads"], mlp_ratio=a["mlp_ratio"], reg_tokens=a["num_register_tokens"],
                init_values=a["layerscale_init"], no_embed_class=True, dynamic_img_size=True,
                num_classes=a["num_classes"], global_pool=a["global_pool"], fc_norm=a["fc_norm"])


def to_stock_timm(model: TCoReViT) -> tuple[str, VisionTransformer]:
    """(stock architecture name, a stock timm ViT holding `model`'s weights) - same features.

    The class token's position is folded into `cls_token` and the mask token dropped: exact for
    inference, not a training parameterisation.
    """
    name = TIMM_ARCHITECTURES.get(model.args.embed_dim, TIMM_ARCHITECTURES[384])
    net = timm.create_model(name, pretrained=False, **_stock_timm_args(model))
    state = to_timm_state_dict(model.state_dict())
    check_state_dict(net, state, f"{type(model).__name__} export")
    net.load_state_dict(state, strict=True)
    return name, net.eval()


def export_for_timm(model: TCoReViT, folder: str | os.PathLike, **metadata: Any) -> Path:
    """Write a folder that `timm.create_model("local-dir:FOLDER", pretrained=True)` loads, without tcore.

    Args:
        model: a T-CoRe backbone.
        folder: created if needed; gets `config.json` (timm's keys, and `metadata` beside them),
            `model.safetensors` and a model card `README.md`.
        **metadata: JSON-serialisable extras stored at the top of `config.json` (e.g. source, source_sha256).

    Returns:
        The folder.
    """
    name, net = to_stock_timm(model)
    folder = Path(folder)
    args = _stock_timm_args(model)
    config = {
        "architecture": name,
        "num_classes": args["num_classes"],
        "num_features": int(model.embed_dim),
        "global_pool": args["global_pool"],
        "model_args": args,
        "pretrained_cfg": _timm_pretrained_cfg(
            model, args["num_classes"], "T-CoRe ViT exported by tcore for stock timm (class position folded into "
                                        "cls_token)"),
        **({"release": model.release} if getattr(model, "release", None) else {}),
        **metadata,
        "format_version": FORMAT_VERSION,
        "tcore_version": __version__,
    }
    write_weights(net.state_dict(), folder)
    write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2))
    card_data = ModelCardData(library_name="timm", license=config["pretrained_cfg"]["license"],
                              pipeline_tag="image-feature-extraction",
                              tags=["timm", "tcore", "vision-transformer", "video", "dense-features",
                                    f"arxiv:{PAPER['arxiv']}"])
    card = model_card(card_data, config, str(folder))
    write_text_atomic(folder / "README.md", str(card))
    return folder

