"""Training configuration: nested frozen dataclasses, a YAML file on top, dotted overrides last.

Every field has the official recipe's value as its default (ViT-S/16 on Kinetics-400,
docs/training-recipe.md). A YAML file overrides some of them, and `key=value` arguments after it
override both (`optim.base_lr=0.002 data.root=/data/k400`). Every value is checked when the config
is built, before a process group, a data scan or a model exists: an unknown key names the closest
valid one, a wrong type or a value out of range names the key, the value and what is allowed
(`ConfigError`, a `tcore.errors.UserError`).

Which keys change the training, and which only its bookkeeping, decides what a resumed run may
change (`config_changes`, `NEVER_BLOCK_RESUME`; training/README.md has the table).

    cfg = load_config("training/configs/vits16_k400.yaml", ["optim.epochs=100"])
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from tcore.architecture import TCoReArgs
from tcore.errors import InvalidInputError

__all__ = [
    "ModelConfig", "DataConfig", "AugmentConfig", "MaskConfig", "LossConfig", "OptimConfig",
    "TrainConfig", "Config", "load_config", "config_from_dict", "config_to_dict", "ConfigError", "config_keys",
    "check_world_size", "NEVER_BLOCK_RESUME", "config_changes", "resume_change_keys",
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
    resume: str = "auto"                     # auto: newest good checkpoint in output_dir; "": start fresh; or a file
    resume_changes: str = ""                 # comma-separated keys a resume may change ("optim.base_lr,optim.epochs")
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


# Keys a resumed run may change without train.resume_changes: its bookkeeping (where the frames and
# the outputs are, workers, how often it logs and saves, what it keeps, when it stops, TensorBoard)
# and how the same maths is computed (device, compilation, memory layout, where the augmentation runs:
# these change rounding, not the recipe). Every other key changes the training: model, data sampling,
# augmentation, masking, losses, optimiser, schedule, seed, precision.
NEVER_BLOCK_RESUME = frozenset({
    "data.root", "data.num_workers", "data.prefetch_factor", "data.pin_memory", "data.persistent_workers",
    "augment.device", "train.output_dir", "train.device", "train.compile", "train.channels_last",
    "train.log_every", "train.checkpoint_every", "train.keep_last", "train.resume", "train.resume_changes",
    "train.stop_at_step", "train.export_at_end", "train.tensorboard",
})


# ------------------------------------------------------------------------------ type checking

def _check_value(value: Any, tp: Any, key: str) -> Any:
    """`value` converted to `tp` (int -> float, list -> tuple) or ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, typing.get_args(tp)))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_value(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}={value!r}: fits none of the allowed types ({'; '.join(errors)})")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}={value!r}: expected a list of {len(args)} values, e.g. {key}=[0.3, 0.7]")
        return tuple(_check_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            expected = {int: "an integer", bool: "true or false", str: "a string"}[tp]
            raise ConfigError(f"{key}={value!r}: expected {expected}, got {type(value).__name__}")
        return value
    raise TypeError(f"{key}: unsupported config type {tp}")  # a schema bug, not user input


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(_unknown_key(prefix + str(unknown[0]), values[unknown[0]], prefix, sorted(names)))
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(value, tp, prefix + name)
    return cls(**kwargs)


def config_keys() -> list[str]:
    """Every dotted key of the schema, in declaration order ("model.embed_dim", ...)."""
    return [f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
            for f in dataclasses.fields(typing.get_type_hints(Config)[section.name])]


def _unknown_key(key: str, value: Any, prefix: str, names: list[str]) -> str:
    """The error for an unknown key: the closest valid key, else the valid keys at that level.

    An unknown section given with keys (`optm: {base_lr: 1}`, i.e. `optm.base_lr=1`) is matched as
    the whole dotted key."""
    if isinstance(value, Mapping) and value:
        key = f"{key}.{next(iter(value))}"
    close = difflib.get_close_matches(key, config_keys() + [f.name for f in dataclasses.fields(Config)], n=1,
                                      cutoff=0.6)
    if close:
        return f"unknown config key {key!r}; did you mean {close[0]!r}?"
    return f"unknown config key {key!r}; the keys under {prefix or 'the top level'} are {', '.join(names)}"


# Allowed values of single fields: key -> (test, what is allowed). Rules between fields are in _validate.
_AT_LEAST_1 = (lambda v: v >= 1, "must be >= 1")
_AT_LEAST_0 = (lambda v: v >= 0, "must be >= 0")
_POSITIVE = (lambda v: v > 0, "must be > 0")
_UNIT = (lambda v: 0 <= v <= 1, "must be in [0, 1]")
_FRACTIONS = (lambda v: 0 <= v[0] <= v[1] <= 1, "must be [low, high] with 0 <= low <= high <= 1")
_RULES: dict[str, tuple[Any, str]] = {
    "model.embed_dim": _AT_LEAST_1, "model.depth": _AT_LEAST_1, "model.num_heads": _AT_LEAST_1,
    "model.patch_size": _AT_LEAST_1, "model.num_register_tokens": _AT_LEAST_0, "model.mlp_ratio": _POSITIVE,
    "model.drop_path_rate": (lambda v: 0 <= v < 1, "must be in [0, 1)"), "model.head_hidden_dim": _AT_LEAST_1,
    "model.head_bottleneck_dim": _AT_LEAST_1, "model.head_n_prototypes": _AT_LEAST_1,
    "model.head_n_layers": _AT_LEAST_1, "model.pmm_num_heads": _AT_LEAST_1, "model.pmm_num_blocks": _AT_LEAST_1,
    "model.pmm_branch_scale": _AT_LEAST_0, "model.layerscale_init": _POSITIVE,
    "data.current_range": (lambda v: 0 <= v[0] < v[1] <= 1, "must be [low, high] with 0 <= low < high <= 1"),
    "data.past_offset_range": _FRACTIONS, "data.future_offset_range": _FRACTIONS,
    "data.num_workers": _AT_LEAST_0, "data.prefetch_factor": _AT_LEAST_1,
    "augment.n_local_crops": _AT_LEAST_1,
    "augment.global_scale": (lambda v: 0 < v[0] <= v[1] <= 1, "must be [low, high] with 0 < low <= high <= 1"),
    "augment.local_scale": (lambda v: 0 < v[0] <= v[1] <= 1, "must be [low, high] with 0 < low <= high <= 1"),
    "mask.probability": _UNIT, "mask.ratio_min_max": _FRACTIONS, "mask.min_num_patches": _AT_LEAST_1,
    "mask.min_aspect": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "loss.dino_weight": _AT_LEAST_0, "loss.koleo_weight": _AT_LEAST_0, "loss.past_ibot_weight": _AT_LEAST_0,
    "loss.future_ibot_weight": _AT_LEAST_0, "loss.mse_weight": _AT_LEAST_0, "loss.student_temp": _POSITIVE,
    "loss.teacher_temp": _POSITIVE, "loss.warmup_teacher_temp": _POSITIVE,
    "loss.warmup_teacher_temp_epochs": _AT_LEAST_0, "loss.center_momentum": _UNIT,
    "optim.batch_size_per_gpu": (lambda v: v >= 2, "must be >= 2 (KoLeo needs two samples per micro-batch)"),
    "optim.global_batch_size": _AT_LEAST_1, "optim.epochs": _AT_LEAST_1,
    "optim.epoch_length": (lambda v: v == "auto" or v >= 1, "must be >= 1 or auto"),
    "optim.warmup_epochs": _AT_LEAST_0, "optim.base_lr": _AT_LEAST_0, "optim.min_lr": _AT_LEAST_0,
    "optim.weight_decay": _AT_LEAST_0, "optim.weight_decay_end": _AT_LEAST_0, "optim.momentum_teacher": _UNIT,
    "optim.final_momentum_teacher": _UNIT, "optim.layerwise_decay": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "optim.patch_embed_lr_mult": _AT_LEAST_0, "optim.freeze_last_layer_epochs": _AT_LEAST_0,
    "optim.pmm_lr_mult": _AT_LEAST_0, "optim.clip_grad": _AT_LEAST_0,
    "optim.adamw_betas": (lambda v: all(0 <= b < 1 for b in v), "must be two values in [0, 1)"),
    "train.output_dir": (lambda v: v != "", "must name a folder"), "train.seed": _AT_LEAST_0,
    "train.log_every": _AT_LEAST_1, "train.checkpoint_every": _AT_LEAST_0, "train.keep_last": _AT_LEAST_1,
    "train.stop_at_step": _AT_LEAST_0,
}


def _value(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _validate(cfg: Config) -> None:
    """Every value in its allowed range, and the rules between fields (ConfigError naming key and value)."""
    for key, (allowed, text) in _RULES.items():
        value = _value(cfg, key)
        if not allowed(value):
            raise ConfigError(f"{key}={_show(value)}: {text}")
    m, o, d = cfg.model, cfg.optim, cfg.data
    for name in ("num_heads", "pmm_num_heads"):
        if m.embed_dim % getattr(m, name):
            raise ConfigError(f"model.{name}={getattr(m, name)}: must divide model.embed_dim={m.embed_dim}")
    for key in ("model.img_size", "augment.global_size", "augment.local_size"):
        value = _value(cfg, key)
        if any(side % m.patch_size or side < m.patch_size for side in (value if isinstance(value, tuple) else [value])):
            raise ConfigError(f"{key}={_show(value)}: must be a positive multiple of model.patch_size={m.patch_size}"
                              + (" (each side)" if isinstance(value, tuple) else ""))
    if o.global_batch_size % o.batch_size_per_gpu:
        raise ConfigError(f"optim.global_batch_size={o.global_batch_size}: must be a multiple of "
                          f"optim.batch_size_per_gpu={o.batch_size_per_gpu}")
    if o.warmup_epochs > o.epochs:
        raise ConfigError(f"optim.warmup_epochs={o.warmup_epochs}: must be <= optim.epochs={o.epochs}")
    if d.current_range[0] - d.past_offset_range[1] < 0 or d.current_range[1] + d.future_offset_range[1] > 1:
        raise ConfigError(f"data.current_range={_show(d.current_range)}: current_range[0] - past_offset_range[1] "
                          f"must be >= 0 and current_range[1] + future_offset_range[1] <= 1 (as the reference "
                          f"asserts); past_offset_range={_show(d.past_offset_range)}, "
                          f"future_offset_range={_show(d.future_offset_range)}")
    if d.layout == "kinetics" and not d.split:
        raise ConfigError("data.split='': the kinetics layout needs a split folder (data.split=train)")
    resume_change_keys(cfg)  # names known keys only


def _show(value: Any) -> str:
    """A value as the user writes it in an override: lists in brackets."""
    return f"[{', '.join(map(str, value))}]" if isinstance(value, tuple) else str(value)


def check_world_size(cfg: Config, world_size: int) -> None:
    """The global batch splits evenly over `world_size` processes of `optim.batch_size_per_gpu` each.

    Raises:
        ConfigError: naming both keys, the number of processes, and the nearest global batches that fit.
    """
    o = cfg.optim
    per_step = o.batch_size_per_gpu * world_size
    if o.global_batch_size % per_step:
        lower = max(per_step, o.global_batch_size // per_step * per_step)
        raise ConfigError(f"optim.global_batch_size={o.global_batch_size}: must be a positive multiple of "
                          f"optim.batch_size_per_gpu={o.batch_size_per_gpu} x {world_size} processes = {per_step} "
                          f"(e.g. optim.global_batch_size={lower}), or change optim.batch_size_per_gpu")


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


def _flat(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"optim": {"base_lr": x}} -> {"optim.base_lr": x}."""
    return {f"{section}.{name}": value for section, fields in values.items() if isinstance(fields, Mapping)
            for name, value in fields.items()}


def config_changes(saved: Mapping[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """What differs between a checkpoint's config and this run's.

    Args:
        saved: the plain nested dict a checkpoint holds (`config_to_dict` of its run).
        cfg: this run's config.

    Returns:
        (key, saved value, this run's value) for every key of this code's schema that differs, in
        schema order; a key the checkpoint lacks (written by older code) counts with its default.
    """
    new, defaults, old = _flat(config_to_dict(cfg)), _flat(config_to_dict(Config())), _flat(saved)
    return [(key, old.get(key, defaults[key]), value) for key, value in new.items()
            if old.get(key, defaults[key]) != value]


def resume_change_keys(cfg: Config) -> list[str]:
    """The keys `train.resume_changes` accepts as changed on resume (comma-separated in the config).

    Raises:
        ConfigError: a name that is not a config key (the message suggests the closest one).
    """
    keys = [k.strip() for k in cfg.train.resume_changes.split(",") if k.strip()]
    valid = set(config_keys())
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "; name dotted config keys, e.g. optim.base_lr"
            raise ConfigError(f"train.resume_changes={cfg.train.resume_changes}: {key!r} is not a config key{hint}")
    return keys


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
