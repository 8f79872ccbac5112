"""Training configuration: nested frozen dataclasses, a YAML file on top, dotted overrides last.

Every field has the official recipe's value as its default (ViT-S/16 on Kinetics-400,
docs/training-recipe.md). A YAML file overrides some of them, and `key=value` arguments after it
override both (`optim.base_lr=0.002 data.root=/data/k400`). Unknown keys and values of the wrong
type are errors that name the key.

    cfg = load_config("training/configs/vits16_k400.yaml", ["optim.epochs=100"])
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from tcore.architecture import TCoReArgs
from tcore.errors import InvalidInputError

__all__ = [
    "ModelConfig", "DataConfig", "AugmentConfig", "MaskConfig", "LossConfig", "OptimConfig",
    "TrainConfig", "Config", "load_config", "config_from_dict", "config_to_dict", "ConfigError",
]


class ConfigError(InvalidInputError):
    """A config file or override that does not fit the schema."""


@dataclass(frozen=True)
class ModelConfig(TCoReArgs):
    # the backbone's arguments are tcore.architecture.TCoReArgs' fields (embed_dim, depth, num_heads, ...)
    drop_path_rate: float = 0.1              # stochastic depth, uniform over blocks (student only)
    head_hidden_dim: int = 2048              # DINO head MLP width
    head_bottleneck_dim: int = 256           # DINO head bottleneck before the prototypes
    head_n_prototypes: int = 65536           # K: DINO/iBOT prototypes (shared head)
    head_n_layers: int = 3                   # DINO head MLP layers
    pmm_num_heads: int = 16                  # Patch Matching Module attention heads
    pmm_num_blocks: int = 1                  # PMM blocks (official: 1; any >= 1 works here)
    pmm_branch_scale: float = 4.0            # PMM cross-attention branch multiplier ("attn_mul")


@dataclass(frozen=True)
class DataConfig:
    root: str = ""                           # frames root (required)
    layout: Literal["kinetics", "folders"] = "kinetics"  # <root>/<split>/<class>/<video>/ | any frame folders
    split: str = "train"                     # sub-folder used by the "kinetics" layout
    manifest: str = ""                       # text file of frame folders (relative to root); "" = scan
    current_range: tuple[float, float] = (0.3, 0.7)        # current frame, fraction of T
    past_offset_range: tuple[float, float] = (0.15, 0.25)  # past offset, fraction of T
    future_offset_range: tuple[float, float] = (0.15, 0.25)  # future offset, fraction of T
    num_workers: int = 10                    # DataLoader worker processes per rank
    prefetch_factor: int = 2                 # batches prefetched per worker
    pin_memory: bool = True                  # page-locked host batches (CUDA only)
    persistent_workers: bool = True          # keep workers alive for the whole run


@dataclass(frozen=True)
class AugmentConfig:
    device: Literal["cpu", "gpu"] = "cpu"    # cpu: PIL in workers (reference ops); gpu: nvJPEG + batched ops
    global_size: int = 224                   # global crop side
    local_size: int = 96                     # local crop side
    n_local_crops: int = 8                   # local crops of the current frame
    global_scale: tuple[float, float] = (0.32, 1.0)   # global crop area fraction
    local_scale: tuple[float, float] = (0.05, 0.32)   # local crop area fraction
    blur: Literal["effective", "intended"] = "effective"  # effective (0, 0.9, 0.5) as the reference runs;
    #                                                      intended (1.0, 0.1, 0.5) as its config reads


@dataclass(frozen=True)
class MaskConfig:
    probability: float = 0.5                 # fraction of global crops that get masked
    ratio_min_max: tuple[float, float] = (0.1, 0.5)  # masked-patch ratio range, stratified over the batch
    min_num_patches: int = 4                 # smallest block area tried
    min_aspect: float = 0.3                  # block aspect ratio in [min_aspect, 1/min_aspect]


@dataclass(frozen=True)
class LossConfig:
    dino_weight: float = 1.0                 # DINO (local + global CLS) loss weight
    koleo_weight: float = 0.1                # KoLeo weight
    past_ibot_weight: float = 0.8            # iBOT on the past-frame reconstruction
    future_ibot_weight: float = 0.8          # iBOT on the future-frame reconstruction
    mse_weight: float = 20.0                 # temporal squeezing: MSE between past/future head logits
    student_temp: float = 0.1                # student softmax temperature (DINO and iBOT)
    teacher_temp: float = 0.07               # teacher temperature after warm-up
    warmup_teacher_temp: float = 0.04        # teacher temperature at step 0
    warmup_teacher_temp_epochs: int = 30     # linear teacher-temperature warm-up
    center_momentum: float = 0.9             # softmax-centering EMA


@dataclass(frozen=True)
class OptimConfig:
    batch_size_per_gpu: int = 64             # micro-batch per process and step
    global_batch_size: int = 256             # per optimizer step; accumulation = global / (per_gpu * world)
    epochs: int = 400                        # "epochs" of epoch_length iterations
    epoch_length: int | Literal["auto"] = 936  # iterations per epoch; "auto" = dataset size // global batch
    warmup_epochs: int = 20                  # linear lr warm-up
    base_lr: float = 0.002                   # lr before scaling
    lr_scaling: Literal["sqrt_wrt_1024", "none"] = "sqrt_wrt_1024"  # lr = base_lr * sqrt(global / 1024)
    min_lr: float = 1e-6                     # cosine floor (also the PMM floor, unscaled, as official)
    weight_decay: float = 0.04               # cosine weight decay start
    weight_decay_end: float = 0.4            # cosine weight decay end
    momentum_teacher: float = 0.992          # EMA momentum start
    final_momentum_teacher: float = 1.0      # EMA momentum end
    layerwise_decay: float = 0.9             # lr multiplier per block from the top
    patch_embed_lr_mult: float = 0.2         # extra multiplier on patch_embed.*
    freeze_last_layer_epochs: int = 1        # prototypes' lr is 0 for this many epochs
    pmm_lr_mult: float = 0.1                 # PMM peak lr = lr * this
    clip_grad: float = 3.0                   # grad-norm clip, separately per module (0 = off)
    adamw_betas: tuple[float, float] = (0.9, 0.999)
    lr_groups: Literal["fixed", "march2025"] = "fixed"  # march2025: plain lr for every non-PMM group


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/vits16_k400"     # checkpoints, metrics.jsonl, export/
    seed: int = 0                            # every random choice is a function of (seed, index)
    device: Literal["auto", "cuda", "cpu"] = "auto"  # auto: cuda when available
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast dtype; masters and losses in fp32
    compile: bool = False                    # torch.compile the backbones and the head
    channels_last: bool = True               # channels-last images into the patch embedding
    log_every: int = 10                      # steps between log lines (the only .item() syncs)
    checkpoint_every: int = 2808             # steps between checkpoints (0 = only at the end)
    keep_last: int = 3                       # checkpoints kept
    resume: str = "auto"                     # auto: latest in output_dir; "": start fresh; or a file
    stop_at_step: int = 0                    # > 0: checkpoint and exit after this step (job time limits)
    export_at_end: bool = True               # write export/ (tcore format + official layout) at the end
    tensorboard: bool = True                 # TensorBoard events when tensorboard is installed


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _validate(self)


# ------------------------------------------------------------------------------ type checking

def _check_value(value: Any, tp: Any, key: str) -> Any:
    """`value` converted to `tp` (int -> float, list -> tuple) or ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_value(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} fits none of the allowed types ({'; '.join(errors)})")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_check_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{key}: unsupported config type {tp}")  # a schema bug, not user input


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; "
                          f"valid keys under {prefix or 'the top level'}: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(value, tp, prefix + name)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    m, o, d, a = cfg.model, cfg.optim, cfg.data, cfg.augment
    if m.embed_dim % m.num_heads or m.embed_dim % m.pmm_num_heads:
        raise ConfigError(f"model.embed_dim={m.embed_dim} must be divisible by model.num_heads={m.num_heads} "
                          f"and model.pmm_num_heads={m.pmm_num_heads}")
    if m.pmm_num_blocks < 1:
        raise ConfigError(f"model.pmm_num_blocks={m.pmm_num_blocks}: must be >= 1")
    for name in ("global_size", "local_size"):
        if getattr(a, name) % m.patch_size:
            raise ConfigError(f"augment.{name}={getattr(a, name)} must be a multiple of model.patch_size")
    if o.batch_size_per_gpu < 2:
        raise ConfigError(f"optim.batch_size_per_gpu={o.batch_size_per_gpu}: KoLeo needs at least 2 samples")
    if o.global_batch_size % o.batch_size_per_gpu:
        raise ConfigError(f"optim.global_batch_size={o.global_batch_size} must be a multiple of "
                          f"optim.batch_size_per_gpu={o.batch_size_per_gpu}")
    if d.current_range[0] - d.past_offset_range[1] < 0 or d.current_range[1] + d.future_offset_range[1] > 1:
        raise ConfigError("data: current_range[0] - past_offset_range[1] must be >= 0 and "
                          "current_range[1] + future_offset_range[1] <= 1 (as the reference asserts)")
    if o.epoch_length != "auto" and o.epoch_length < 1:
        raise ConfigError(f"optim.epoch_length={o.epoch_length}: must be >= 1 or 'auto'")
    if not 0 <= cfg.mask.probability <= 1:
        raise ConfigError(f"mask.probability={cfg.mask.probability}: must be in [0, 1]")


# ------------------------------------------------------------------------------ loading

def _parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.base_lr=0.002")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: bad key {key!r}")
    return key.split("."), yaml.safe_load(raw) if raw.strip() else ""


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists): what checkpoints store."""
    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, tuple) else v

    return {s: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, s)).items()}
            for s in (f.name for f in dataclasses.fields(Config))}


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """A validated Config from a nested dict (missing keys keep their defaults)."""
    return _build(Config, values, "")


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file, then the dotted overrides.

    Args:
        path: a YAML file, or None for the defaults.
        overrides: `a.b=value` strings; values are parsed as YAML (`0.1`, `true`, `[0.3, 0.7]`, `auto`).

    Raises:
        FileNotFoundError: no such YAML file.
        ConfigError: unknown key, wrong type or inconsistent values (the message names the key).
    """
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file (configs live in training/configs/)")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        values = dict(loaded)
    for text in overrides:
        keys, value = _parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        values = _merge(values, nested)
    return config_from_dict(values)
