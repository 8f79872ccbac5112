"""Vision Transformer backbones behind one feature API.

`TCoReBackbone` is T-CoRe's ViT (a DINOv2-style ViT with 4 register tokens, LayerScale and an
antialiased bicubic position-embedding resize) assembled from timm's ViT blocks, with parameter
names equal to the official checkpoint's backbone keys, so official files load strictly without
renaming. `TimmViTBackbone` puts any timm `VisionTransformer` (DINO, DINOv2, ...) behind the same
`patch_tokens` / `forward_features` API, with the position-embedding resize of its family.

Token order inside both is `[CLS, registers, patches]`; registers carry no position embedding.

Paper: "When the Future Becomes the Past: Taming Temporal Correspondence for Self-supervised
Video Representation Learning" (CVPR 2025).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TCoReBackbone",
    "TimmViTBackbone",
    "PosInterp",
    "resize_pos_grid",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PosInterp = Literal["tcore", "dinov2"]
_POS_INTERP_ANTIALIAS = {"tcore": True, "dinov2": False}


def resize_pos_grid(grid: torch.Tensor, size: tuple[int, int], pos_interp: PosInterp) -> torch.Tensor:
    """Resize a position-embedding grid the way a model family does it.

    Args:
        grid: (1, gh, gw, D) learned patch position embeddings (any float dtype).
        size: target grid (h, w) in patches.
        pos_interp: "tcore" (bicubic, antialias on, explicit size: T-CoRe and DINOv2-with-registers)
            or "dinov2" (bicubic, antialias off, explicit size: DINOv2 without registers as in its
            ONNX/HF exports).

    Returns:
        (1, h*w, D) embeddings in `grid`'s dtype; computed in float32. Returned unchanged when the
        size already matches.
    """
    if pos_interp not in _POS_INTERP_ANTIALIAS:
        raise ValueError(f"pos_interp={pos_interp!r}: expected one of {sorted(_POS_INTERP_ANTIALIAS)}")
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


class _FeatureAPI(nn.Module):
    """The feature API shared by every backbone: subclasses implement `_tokens`."""

    patch_size: int
    embed_dim: int
    num_register_tokens: int
    pos_interp: PosInterp
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def _tokens(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """(B,3,H,W) -> final-normed (B, 1+R+h*w, D) tokens."""
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> tuple[int, int]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"x: expected shape (B, 3, H, W) with 3 RGB channels, got {tuple(x.shape)}; "
                "add a batch axis with x[None] or convert grey/RGBA images to RGB first")
        if not x.is_floating_point():
            raise TypeError(f"x: expected an ImageNet-normalised float tensor, got dtype {x.dtype}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"x: height and width must be multiples of the patch size {p}, got {h}x{w}; "
                f"resize to e.g. {max(p, h // p * p)}x{max(p, w // p * p)}")
        return h // p, w // p

    def _check_masks(self, masks: torch.Tensor | None, b: int, n: int) -> None:
        if masks is None:
            return
        if masks.dtype != torch.bool or tuple(masks.shape) != (b, n):
            raise ValueError(f"masks: expected a bool tensor of shape ({b}, {n}), "
                             f"got {masks.dtype} {tuple(masks.shape)}")

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Final-normed tokens, split by kind.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised; H and W multiples of `patch_size`.
            masks: optional (B, h*w) bool; True replaces that patch embedding by `mask_token`
                (before the position embedding is added), as in T-CoRe's training.

        Returns:
            dict with "cls" (B, D), "registers" (B, R, D) and "patches" (B, h, w, D).
        """
        h, w = self._check_input(x)
        self._check_masks(masks, x.shape[0], h * w)
        tokens = self._tokens(x, masks)  # (B, 1+R+h*w, D)
        r = self.num_register_tokens
        return {
            "cls": tokens[:, 0],
            "registers": tokens[:, 1:1 + r],
            "patches": tokens[:, 1 + r:].unflatten(1, (h, w)),  # (B, h, w, D)
        }

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Same as `forward_features` (so DDP and hooks see the whole computation)."""
        return self.forward_features(x, masks)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed patch tokens on their grid, without CLS and registers.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised; H and W multiples of `patch_size`.

        Returns:
            (B, H/p, W/p, D) tokens (not L2-normalised).
        """
        return self.forward_features(x)["patches"]


class TCoReBackbone(_FeatureAPI):
    """T-CoRe's Vision Transformer (DINOv2-style, with registers).

    Architecture (official config): patch 16, pos-embed learned for a 224 crop (14x14 grid plus a
    CLS slot), `num_register_tokens` registers inserted after CLS without position embedding,
    pre-norm blocks with LayerScale (init 1e-5), qkv/proj/ffn biases, exact GELU, LayerNorm eps
    1e-6 and a final LayerNorm. Attention runs through PyTorch's fused SDPA (timm's `Attention`).

    Parameter names equal the official checkpoint's backbone keys (`cls_token`, `pos_embed`,
    `register_tokens`, `mask_token`, `patch_embed.proj.*`, `blocks.{i}.*`, `norm.*`).

    Args:
        embed_dim: token width D (384 for ViT-S, 768 for ViT-B).
        depth: number of blocks.
        num_heads: attention heads.
        patch_size: patch size p in pixels.
        num_register_tokens: register tokens R (T-CoRe: 4).
        mlp_ratio: MLP hidden width / D.
        img_size: crop size the position embedding was learned for (T-CoRe: 224).
        layerscale_init: LayerScale initial value (weights overwrite it).
        drop_path_rate: stochastic depth per residual branch, the same for every block (training).
        pos_interp: position-embedding resize rule: "tcore" (bicubic + antialias, T-CoRe and
            DINOv2-with-registers) or "dinov2" (no antialias).
        pretrained: None for random weights, or a file / `save_pretrained` folder / state dict
            whose architecture must match exactly (strict loading).
    """

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        patch_size: int = 16,
        num_register_tokens: int = 4,
        mlp_ratio: float = 4.0,
        img_size: int = 224,
        layerscale_init: float = 1e-5,
        drop_path_rate: float = 0.0,
        pos_interp: PosInterp = "tcore",
        pretrained: Any = None,
    ) -> None:
        super().__init__()
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        if pos_interp not in _POS_INTERP_ANTIALIAS:
            raise ValueError(f"pos_interp={pos_interp!r}: expected one of {sorted(_POS_INTERP_ANTIALIAS)}")
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.mlp_ratio = mlp_ratio
        self.img_size = img_size
        self.pos_interp = pos_interp
        self.pos_grid = img_size // patch_size

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid ** 2, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=3,
                                      embed_dim=embed_dim, strict_img_size=False)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                  init_values=layerscale_init, drop_path=drop_path_rate, norm_layer=norm_layer,
                  act_layer=nn.GELU)
            for _ in range(depth)
        ])
        self.norm = norm_layer(embed_dim)
        self._init_weights()
        if pretrained is not None and pretrained is not False:
            from .weights import load_weights_into

            load_weights_into(self, pretrained)
        self.eval()

    @property
    def arch(self) -> dict[str, Any]:
        """Constructor arguments that define the architecture (what `config.json` stores)."""
        return dict(embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                    patch_size=self.patch_size, num_register_tokens=self.num_register_tokens,
                    mlp_ratio=self.mlp_ratio, img_size=self.img_size)

    def _init_weights(self) -> None:
        """The official initialisation (matters only for training from scratch)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _tokens(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        b, _, hp, wp = x.shape
        h, w = hp // self.patch_size, wp // self.patch_size
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, D)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = x + self._patch_pos_embed(h, w).to(x.dtype)
        cls = self.cls_token + self.pos_embed[:, :1]  # (1, 1, D)
        x = torch.cat([cls.expand(b, -1, -1).to(x.dtype),
                       self.register_tokens.expand(b, -1, -1).to(x.dtype), x], dim=1)  # (B, 1+R+h*w, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def _patch_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """(1, h*w, D) patch position embeddings for an h x w grid (official rule: the stored table
        as is for the square training grid, else bicubic to the explicit size)."""
        g = self.pos_grid
        grid = self.pos_embed[:, 1:].unflatten(1, (g, g))  # (1, g, g, D)
        return resize_pos_grid(grid, (h, w), self.pos_interp)

    def save_pretrained(self, save_directory: str, **metadata: Any) -> None:
        """Write `config.json` + `model.safetensors` (see `tcore.hub.save_pretrained`)."""
        from .hub import save_pretrained

        save_pretrained(self, save_directory, **metadata)

    @classmethod
    def from_pretrained(cls, repo_id_or_dir: str, *, revision: str | None = None,
                        cache_dir: str | None = None) -> "TCoReBackbone":
        """Load a backbone written by `save_pretrained`, from a folder or a Hub repo, strictly."""
        from .hub import from_pretrained

        model = from_pretrained(repo_id_or_dir, revision=revision, cache_dir=cache_dir)
        if not isinstance(model, cls):
            raise TypeError(f"{repo_id_or_dir}: holds a {type(model).__name__}, not a {cls.__name__}; "
                            "use tcore.load_backbone() for other backbones")
        return model


class TimmViTBackbone(_FeatureAPI):
    """Any timm `VisionTransformer` behind tcore's feature API.

    The position embedding is resized per family (`pos_interp`), never with timm's dynamic
    resizing, which matches neither DINOv2's nor T-CoRe's rule exactly.

    Args:
        model: a timm `VisionTransformer` (patch 14 or 16, with or without registers).
        pos_interp: "tcore" (bicubic + antialias) or "dinov2" (bicubic, no antialias).
        name: the timm architecture name, if known (stored in `config.json`).
        model_kwargs: the timm constructor arguments (stored in `config.json`).
    """

    def __init__(self, model: nn.Module, pos_interp: PosInterp, name: str | None = None,
                 model_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for attr in ("patch_embed", "blocks", "norm", "pos_embed"):
            if not hasattr(model, attr):
                raise TypeError(f"model: expected a timm VisionTransformer, {type(model).__name__} "
                                f"has no attribute {attr!r}")
        if pos_interp not in _POS_INTERP_ANTIALIAS:
            raise ValueError(f"pos_interp={pos_interp!r}: expected one of {sorted(_POS_INTERP_ANTIALIAS)}")
        if model.pos_embed is None:
            raise ValueError("model: this timm ViT has no learned absolute position embedding "
                             "(pos_embed is None); only such ViTs are supported")
        if getattr(model, "cls_token", None) is None:
            raise ValueError("model: this timm ViT has no class token; only ViTs with a CLS token are supported")
        self.model = model
        self.pos_interp = pos_interp
        self.timm_name = name
        self.timm_kwargs = dict(model_kwargs or {})
        ps = model.patch_embed.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.embed_dim = int(model.embed_dim)
        self.num_register_tokens = int(getattr(model, "num_reg_tokens", 0))
        self.pos_grid_size = tuple(int(g) for g in model.patch_embed.grid_size)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        self.eval()

    @property
    def arch(self) -> dict[str, Any]:
        return dict(timm_name=self.timm_name, timm_kwargs=self.timm_kwargs)

    def _tokens(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        if masks is not None:
            raise ValueError("masks: this timm backbone has no mask token; masking is for T-CoRe backbones")
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

    def save_pretrained(self, save_directory: str, **metadata: Any) -> None:
        """Write `config.json` + `model.safetensors` (see `tcore.hub.save_pretrained`)."""
        from .hub import save_pretrained

        save_pretrained(self, save_directory, **metadata)
