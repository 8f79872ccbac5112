"""The networks: T-CoRe's ViT as a timm `VisionTransformer`, an adapter that puts any other timm ViT
behind the same feature API, and the table of named T-CoRe architectures.

T-CoRe's ViT is DINOv2's ViT with 4 register tokens: patch 16, LayerScale, position embeddings for
a 224 crop resized bicubically with antialias to any other grid, registers without position
embedding. That is timm's `VisionTransformer(reg_tokens=4, no_embed_class=True,
dynamic_img_size=True, init_values=1e-5)`, so `TCoReViT` only adds what timm lacks: the mask token
(training), the class token's position embedding as its own parameter (`cls_pos_embed`, so that
training keeps the official parameterisation) and the feature API (`patch_tokens`, a dict of
cls/registers/patches, DINOv2's `get_intermediate_layers`). timm's own methods keep timm's
meaning: `forward_features` returns the (B, 1+R+h*w, D) token tensor.

Nothing here reads or writes files: loading is `tcore.checkpoint`, the Hugging Face format
`tcore.hub`, and the public classes (a network that can also be saved and loaded) `tcore.backbone`.

Paper: "When the Future Becomes the Past: Taming Temporal Correspondence for Self-supervised
Video Representation Learning" (CVPR 2025). The backbone's facts: docs/propagation-protocol.md §3.3 and
docs/training-recipe.md §5.1.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar, overload

import torch
import torch.nn.functional as F
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .constants import IMAGENET_MEAN, IMAGENET_STD
from .errors import InvalidInputError, InvalidTypeError

__all__ = [
    "ARCHITECTURES",
    "HEAD_ARGS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PosInterp",
    "FeatureAPI",
    "TCoReArgs",
    "TCoReViT",
    "TimmViT",
    "resize_pos_grid",
    "takes_tcore_args",
]


@dataclass(frozen=True)
class TCoReArgs:
    """The arguments that define a T-CoRe ViT: the one place they are declared.

    `TCoReViT` and `tcore.TCoReBackbone` take them as keyword arguments (their signatures are
    made from these fields), `config.json` stores them under `model_args`, and the training
    recipe's `ModelConfig` inherits them. A new architecture argument is a new field here (with a
    default) and its use in `TCoReViT.__init__`.
    """

    embed_dim: int = 384                     # token width D (ViT-S 384, ViT-B 768)
    depth: int = 12                          # number of blocks
    num_heads: int = 6                       # attention heads (ViT-S 6, ViT-B 12)
    patch_size: int = 16                     # patch size p in pixels
    num_register_tokens: int = 4             # register tokens R after the class token (T-CoRe: 4)
    mlp_ratio: float = 4.0                   # MLP hidden width / D
    img_size: int | tuple[int, int] = 224    # crop the position table was learned for, an int or (H, W)
    layerscale_init: float = 1e-5            # LayerScale initial value (weights overwrite it)
    drop_path_rate: float = 0.0              # stochastic depth per residual branch, every block (training)

    def as_kwargs(self) -> dict[str, Any]:
        """The fields of `TCoReArgs` only (a subclass's own fields left out), as constructor kwargs."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TCoReArgs)}


# the classifier arguments of timm's VisionTransformer that a T-CoRe backbone records beside
# TCoReArgs (a fine-tuned model's head), with their types
HEAD_ARGS: dict[str, Any] = {"num_classes": int, "global_pool": str, "fc_norm": bool | None}

_Init = TypeVar("_Init", bound=Callable[..., None])


def takes_tcore_args(init: _Init) -> _Init:
    """Give an `__init__(self, ..., **kwargs)` the fields of `TCoReArgs` as keyword-only parameters
    in its signature (what `help()`, IDEs and the Hub mixin's recorded config read)."""
    own = inspect.signature(init)
    hints = typing.get_type_hints(TCoReArgs)
    fields = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
              for f in dataclasses.fields(TCoReArgs)]
    params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    rest = [p for p in own.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    init.__signature__ = own.replace(parameters=params + fields + rest)  # type: ignore[attr-defined]
    return init


# Architecture is code: the TCoReArgs of each named T-CoRe architecture (fields left out take
# TCoReArgs' defaults).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tcore_vits16": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16, num_register_tokens=4,
                         mlp_ratio=4.0, img_size=224),
    "tcore_vitb16": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, num_register_tokens=4,
                         mlp_ratio=4.0, img_size=224),
    # private, for tests and CPU training runs: the golden fixture's official tiny ViT
    "_tcore_vit_tiny": dict(embed_dim=64, depth=2, num_heads=2, patch_size=16, num_register_tokens=4,
                            mlp_ratio=4.0, img_size=224),
}

PosInterp = Literal["tcore", "dinov2"]
_POS_INTERP_ANTIALIAS = {"tcore": True, "dinov2": False}


def resize_pos_grid(grid: torch.Tensor, size: tuple[int, int], pos_interp: PosInterp) -> torch.Tensor:
    """Resize a position-embedding grid the way a model family does it (for `TimmViT`).

    Args:
        grid: (1, gh, gw, D) learned patch position embeddings (any float dtype).
        size: target grid (h, w) in patches.
        pos_interp: "tcore" (bicubic, antialias on, explicit size: T-CoRe, DINOv2 with registers,
            and timm's dynamic resize) or "dinov2" (bicubic, antialias off, explicit size: DINOv2
            without registers as in its ONNX/HF exports).

    Returns:
        (1, h*w, D) embeddings in `grid`'s dtype; computed in float32. Returned unchanged when the
        size already matches.
    """
    if pos_interp not in _POS_INTERP_ANTIALIAS:
        raise InvalidInputError(f"pos_interp={pos_interp!r}: expected one of {sorted(_POS_INTERP_ANTIALIAS)}")
    _, gh, gw, dim = grid.shape
    if (gh, gw) == tuple(size):
        return grid.reshape(1, gh * gw, dim)
    out = F.interpolate(
        grid.float().permute(0, 3, 1, 2),  # (1, D, gh, gw)
        size=tuple(size),
        mode="bicubic",
        antialias=_POS_INTERP_ANTIALIAS[pos_interp],
    )
    return out.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], dim).to(grid.dtype)  # (1, h*w, D)


class FeatureAPI:
    """The feature API of every tcore backbone (a mixin for `nn.Module`s).

    Subclasses set `patch_size` and `num_register_tokens` and implement `_final_tokens`. Token
    order is `[CLS, registers, patches]`.
    """

    patch_size: int
    num_register_tokens: int
    pos_interp: PosInterp

    def _final_tokens(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """(B, 3, H, W) -> final-normed (B, 1+R+h*w, D) tokens."""
        raise NotImplementedError

    def _preprocessing(self) -> Mapping[str, Any]:
        """timm's pretrained cfg of the weights (mean, std, ...), empty when unknown."""
        return getattr(self, "pretrained_cfg", None) or {}

    @property
    def mean(self) -> tuple[float, float, float]:
        """RGB mean the weights expect (ImageNet's unless the pretrained cfg says otherwise)."""
        return tuple(self._preprocessing().get("mean", IMAGENET_MEAN))

    @property
    def std(self) -> tuple[float, float, float]:
        """RGB standard deviation the weights expect."""
        return tuple(self._preprocessing().get("std", IMAGENET_STD))

    def _check_input(self, x: torch.Tensor) -> tuple[int, int]:
        """The (h, w) token grid of a valid input; a clear error for anything else."""
        if not isinstance(x, torch.Tensor):
            raise InvalidTypeError(f"x: expected a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidInputError(
                f"x: expected shape (B, 3, H, W) with 3 RGB channels, got {tuple(x.shape)}; "
                "add a batch axis with x[None] or convert grey/RGBA images to RGB first")
        if not x.is_floating_point():
            raise InvalidTypeError(f"x: expected an ImageNet-normalised float tensor, got dtype {x.dtype}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise InvalidInputError(
                f"x: height and width must be multiples of the patch size {p}, got {h}x{w}; "
                f"resize to e.g. {max(p, h // p * p)}x{max(p, w // p * p)}")
        return h // p, w // p

    @staticmethod
    def _check_masks(masks: torch.Tensor, b: int, n: int) -> None:
        if masks.dtype != torch.bool or tuple(masks.shape) != (b, n):
            raise InvalidInputError(f"masks: expected a bool tensor of shape ({b}, {n}), "
                                    f"got {masks.dtype} {tuple(masks.shape)}")

    def forward_features_dict(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Final-normed tokens, split by kind.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised; H and W multiples of `patch_size`.
            masks: optional (B, h*w) bool; True replaces that patch embedding by `mask_token`
                (before the position embedding is added), as in T-CoRe's training.

        Returns:
            dict with "cls" (B, D), "registers" (B, R, D) and "patches" (B, h, w, D).
        """
        h, w = self._check_input(x)
        if masks is not None:
            self._check_masks(masks, x.shape[0], h * w)
        tokens = self._final_tokens(x, masks)  # (B, 1+R+h*w, D)
        r = self.num_register_tokens
        return {
            "cls": tokens[:, 0],
            "registers": tokens[:, 1:1 + r],
            "patches": tokens[:, 1 + r:].unflatten(1, (h, w)),  # (B, h, w, D)
        }

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed patch tokens on their grid, without CLS and registers.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised; H and W multiples of `patch_size`.

        Returns:
            (B, H/p, W/p, D) tokens (not L2-normalised).
        """
        return self.forward_features_dict(x)["patches"]


def _square(size: int | Sequence[int]) -> int | tuple[int, int]:
    """An image size as an int when square, else (H, W)."""
    if isinstance(size, int):
        return size
    h, w = (int(s) for s in size)
    return h if h == w else (h, w)


# timm VisionTransformer arguments that T-CoRe's architecture fixes: accepted at this value, refused at another
_FIXED_TIMM_ARGS: dict[str, Any] = dict(
    in_chans=3, qkv_bias=True, qk_norm=False, scale_attn_norm=False, scale_mlp_norm=False, proj_bias=True,
    class_token=True, pos_embed="learn", no_embed_class=True, pre_norm=False, final_norm=True,
    dynamic_img_size=True, dynamic_img_pad=False)
# timm's layer arguments: T-CoRe's ViT is made of timm's default layers (accepted only at those)
_TIMM_LAYERS = ("embed_layer", "embed_norm_layer", "norm_layer", "act_layer", "block_fn", "mlp_layer", "attn_layer")
# timm's names of TCoReArgs fields
_TIMM_ALIASES = {"reg_tokens": "num_register_tokens", "init_values": "layerscale_init"}
_TIMM_PARAMETERS = inspect.signature(VisionTransformer.__init__).parameters


def _split_arguments(owner: str, kwargs: Mapping[str, Any]) -> tuple[TCoReArgs, dict[str, Any]]:
    """(the architecture, timm's other `VisionTransformer` arguments) of a T-CoRe ViT's keyword arguments.

    timm's standard ViT arguments are accepted where they agree with T-CoRe's architecture
    (`dynamic_img_size=True`, `class_token=True`, `reg_tokens=` and `init_values=` for
    `num_register_tokens` and `layerscale_init`, ...) and refused by name where they do not;
    the head, pooling and dropout arguments pass on to timm.

    Raises:
        InvalidInputError: a timm argument at a value T-CoRe's architecture does not have.
        InvalidTypeError: an argument neither T-CoRe's nor timm's ViT takes.
    """
    names = [f.name for f in dataclasses.fields(TCoReArgs)]
    args: dict[str, Any] = {}
    timm_kwargs: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in names:
            target = key
        elif key in _TIMM_ALIASES:
            target = _TIMM_ALIASES[key]
            if value is None:
                raise InvalidInputError(f"{owner}: {key}=None would remove what {target} configures (T-CoRe's "
                                        f"blocks have LayerScale); leave {key} out or pass {target}=")
            if target in kwargs and kwargs[target] != value:
                raise InvalidInputError(f"{owner}: {key}={value!r} and {target}={kwargs[target]!r} name the same "
                                        f"argument; pass only {target}=")
        elif key in _FIXED_TIMM_ARGS or key in _TIMM_LAYERS:
            fixed = _FIXED_TIMM_ARGS[key] if key in _FIXED_TIMM_ARGS else _TIMM_PARAMETERS[key].default
            if value is not fixed and value != fixed:
                raise InvalidInputError(f"{owner}: {key}={value!r} does not fit T-CoRe's ViT, which is built with "
                                        f"{key}={getattr(fixed, '__name__', fixed)!r}; leave {key} out")
            continue
        elif key in _TIMM_PARAMETERS and key != "self":
            timm_kwargs[key] = value
            continue
        else:
            raise InvalidTypeError(f"{owner}: unknown argument {key}={value!r}; the architecture's are {names}, "
                                   "the others timm VisionTransformer's (num_classes, global_pool, drop_rate, ...)")
        args[target] = value
    return TCoReArgs(**args), timm_kwargs


class TCoReViT(FeatureAPI, VisionTransformer):
    """T-CoRe's Vision Transformer: timm's `VisionTransformer` configured as the official one.

    Patch 16, a position table learned for a 224 crop (14x14, resized by timm's dynamic resize:
    bicubic with antialias at the explicit grid size, the official rule, exactly), a class token
    with its own position embedding `cls_pos_embed`, `num_register_tokens` registers after it
    without position embedding, pre-norm blocks with LayerScale (init 1e-5), qkv/proj/MLP biases,
    exact GELU, LayerNorm eps 1e-6 and a final LayerNorm; `mask_token` (1, D) replaces masked
    patch embeddings in training. Built in eval mode.

    Parameter names are timm's (`cls_token`, `reg_token`, `pos_embed` (1, 196, D), `blocks.*`)
    plus `cls_pos_embed` and `mask_token`; official checkpoints are converted by
    `tcore.checkpoint.convert_state_dict` (`cls_token`, `pos_embed[:, :1]` -> `cls_pos_embed`,
    `pos_embed[:, 1:]`, `register_tokens` -> `reg_token`). The official code adds the class
    token and its position embedding at every forward, as here: a training step updates both
    tensors exactly as the official code updates `cls_token` and `pos_embed`.

    Args:
        **kwargs: the architecture, the fields of `TCoReArgs` (embed_dim, depth, num_heads,
            patch_size, num_register_tokens, mlp_ratio, img_size, layerscale_init,
            drop_path_rate), and timm `VisionTransformer` arguments: the head, pooling and dropout
            ones (num_classes (default 0), global_pool, fc_norm, drop_rate, ...) pass on to timm;
            those the architecture fixes (dynamic_img_size, class_token, qkv_bias, ...) are
            accepted at T-CoRe's value and refused at another.

    Attributes:
        args: the `TCoReArgs` it was built with (img_size an int when square).
    """

    pos_interp: PosInterp = "tcore"

    @takes_tcore_args
    def __init__(self, **kwargs: Any) -> None:
        args, timm_kwargs = _split_arguments(type(self).__name__, kwargs)
        args = dataclasses.replace(args, img_size=_square(args.img_size))
        sides = (args.img_size,) * 2 if isinstance(args.img_size, int) else args.img_size
        if any(s % args.patch_size for s in sides):
            raise InvalidInputError(f"img_size={args.img_size} must be a multiple of patch_size={args.patch_size}")
        super().__init__(
            img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim, depth=args.depth,
            num_heads=args.num_heads, mlp_ratio=args.mlp_ratio, init_values=args.layerscale_init,
            reg_tokens=args.num_register_tokens, drop_path_rate=args.drop_path_rate, **_FIXED_TIMM_ARGS,
            **{"num_classes": 0, **timm_kwargs})
        self.args = args
        self.patch_size = args.patch_size
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, args.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, args.embed_dim))
        nn.init.trunc_normal_(self.cls_pos_embed, std=0.02)  # the official init of pos_embed[:, :1]
        self.eval()

    @property
    def arch(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this module (what `config.json` stores under
        `model_args`): the fields of `TCoReArgs`, and the classifier's `HEAD_ARGS` as the module has
        them now (after `reset_classifier` too)."""
        head = {"num_classes": int(self.num_classes), "global_pool": self.global_pool,
                "fc_norm": not isinstance(self.fc_norm, nn.Identity)}
        return {**dataclasses.asdict(self.args), **head}

    @property
    def num_register_tokens(self) -> int:  # type: ignore[override]
        return self.num_reg_tokens

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """timm's position step, plus the class token's own position embedding.

        Args:
            x: (B, h, w, D) patch embeddings.

        Returns:
            (B, 1+R+h*w, D): CLS + cls_pos_embed, registers, patches + resized position table.
        """
        x = super()._pos_embed(x)  # (B, 1+R+h*w, D), nothing added to the class token
        return torch.cat([x[:, :1] + self.cls_pos_embed, x[:, 1:]], dim=1)

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                         masks: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed tokens, timm's `forward_features` (plus optional patch masking).

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised; H and W multiples of `patch_size`.
            attn_mask, is_causal: as timm's (not with `masks`).
            masks: optional (B, h*w) bool; True replaces that patch embedding by `mask_token`
                before the position embedding is added (T-CoRe's training).

        Returns:
            (B, 1+R+h*w, D) tokens: CLS, registers, patches in row-major order.
        """
        h, w = self._check_input(x)
        if masks is None:
            return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise InvalidInputError("masks: patch masking does not combine with attn_mask or is_causal")
        self._check_masks(masks, x.shape[0], h * w)
        # timm's forward_features, with the mask token placed between the two embedding steps
        x = self.patch_embed(x)  # (B, h, w, D)
        x = torch.where(masks.view(*x.shape[:3], 1), self.mask_token.to(x.dtype), x)
        x = self._pos_embed(x)  # (B, 1+R+h*w, D)
        x = self.norm_pre(self.patch_drop(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def _final_tokens(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        return self.forward_features(x, masks=masks)

    @overload  # type: ignore[override]
    def get_intermediate_layers(self, x: torch.Tensor, n: int | Sequence[int] = 1, reshape: bool = False,
                                return_class_token: Literal[False] = False, norm: bool = True
                                ) -> tuple[torch.Tensor, ...]: ...
    @overload
    def get_intermediate_layers(self, x: torch.Tensor, n: int | Sequence[int] = 1, reshape: bool = False, *,
                                return_class_token: Literal[True], norm: bool = True
                                ) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]: ...

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[torch.Tensor, ...] | tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """DINOv2's `get_intermediate_layers`: patch tokens of some blocks.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised; H and W multiples of `patch_size`.
            n: the last n blocks (int), or block indices (a sequence; negative counts from the end).
            reshape: patch tokens as (B, D, h, w) instead of (B, h*w, D).
            return_class_token: pair each output with that block's (B, D) class token.
            norm: apply the final LayerNorm to each output (DINOv2's default).

        Returns:
            One entry per block, in block order: patch tokens, or (patch tokens, class token).
        """
        self._check_input(x)
        outputs = self.forward_intermediates(
            x, indices=n if isinstance(n, int) else list(n), return_prefix_tokens=True, norm=norm,
            output_fmt="NCHW" if reshape else "NLC", intermediates_only=True)
        if return_class_token:
            return tuple((patches, prefix[:, 0]) for patches, prefix in outputs)
        return tuple(patches for patches, _ in outputs)

    def no_weight_decay(self) -> set[str]:
        """timm's no-decay set (for timm training scripts) plus the class position and mask token."""
        return super().no_weight_decay() | {"cls_pos_embed", "mask_token"}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups (layer decay) with `cls_pos_embed` and `mask_token` in the stem."""
        return dict(super().group_matcher(coarse),
                    stem=r"^cls_token|^cls_pos_embed|^mask_token|^reg_token|^pos_embed|^patch_embed|^norm_pre")


class TimmViT(FeatureAPI, nn.Module):
    """Any timm `VisionTransformer` (DINO, DINOv2, ...) behind tcore's feature API.

    The position embedding is resized by the family's rule (`pos_interp`): "tcore" is timm's own
    dynamic resize (bicubic with antialias at the explicit size: T-CoRe, DINOv2 with registers);
    "dinov2" turns antialias off (DINOv2 without registers, as its ONNX/HF exports do).

    Args:
        model: a timm `VisionTransformer` with a class token and a learned absolute position table.
        pos_interp: "tcore" or "dinov2".
        name: the timm architecture name, if known (stored in `config.json`).
        model_kwargs: the timm constructor arguments (stored in `config.json`).
    """

    def __init__(self, model: nn.Module, pos_interp: PosInterp, name: str | None = None,
                 model_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for attr in ("patch_embed", "blocks", "norm", "pos_embed"):
            if not hasattr(model, attr):
                raise InvalidTypeError(f"model: expected a timm VisionTransformer, {type(model).__name__} "
                                       f"has no attribute {attr!r}")
        if pos_interp not in _POS_INTERP_ANTIALIAS:
            raise InvalidInputError(f"pos_interp={pos_interp!r}: expected one of {sorted(_POS_INTERP_ANTIALIAS)}")
        if model.pos_embed is None:
            raise InvalidInputError("model: this timm ViT has no learned absolute position embedding "
                                    "(pos_embed is None); only such ViTs are supported")
        if getattr(model, "cls_token", None) is None:
            raise InvalidInputError("model: this timm ViT has no class token; only ViTs with a CLS token are supported")
        self.model = model
        self.pos_interp = pos_interp
        self.timm_name = name
        self.timm_kwargs = dict(model_kwargs or {})
        ps = model.patch_embed.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.embed_dim = int(model.embed_dim)
        self.num_register_tokens = int(getattr(model, "num_reg_tokens", 0))
        self.pos_grid_size = tuple(int(g) for g in model.patch_embed.grid_size)
        self.eval()

    @property
    def arch(self) -> dict[str, Any]:
        """The timm name and constructor arguments (what `config.json` stores)."""
        return dict(timm_name=self.timm_name, timm_kwargs=self.timm_kwargs)

    def _preprocessing(self) -> Mapping[str, Any]:
        return getattr(self.model, "pretrained_cfg", None) or {}

    def _final_tokens(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        if masks is not None:
            raise InvalidInputError("masks: this timm backbone has no mask token; masking is for T-CoRe backbones")
        m = self.model
        b, _, hp, wp = x.shape
        h, w = hp // self.patch_size, wp // self.patch_size
        x = m.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, D)
        x = m.patch_embed.norm(x)
        n_prefix = 0 if m.no_embed_class else m.num_prefix_tokens
        gh, gw = self.pos_grid_size
        pos = m.pos_embed
        grid = pos[:, n_prefix:].unflatten(1, (gh, gw))  # (1, gh, gw, D)
        x = x + resize_pos_grid(grid, (h, w), self.pos_interp).to(x.dtype)
        prefix = [m.cls_token.expand(b, -1, -1)]
        if self.num_register_tokens:
            prefix.append(m.reg_token.expand(b, -1, -1))
        prefix = torch.cat(prefix, dim=1)  # (B, 1+R, D)
        if n_prefix:
            prefix = prefix + pos[:, :n_prefix]
        x = torch.cat([prefix.to(x.dtype), x], dim=1)  # (B, 1+R+h*w, D)
        x = m.norm_pre(x)
        for block in m.blocks:
            x = block(x)
        return m.norm(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Same as `forward_features_dict`."""
        return self.forward_features_dict(x)
