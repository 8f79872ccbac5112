"""The T-CoRe backbone equals the official ViT: an independent plain implementation written here
from docs/propagation-protocol.md §3.3 and docs/training-recipe.md §5.1, and the official code's own
outputs (the golden files of the shared test data). It is a timm
VisionTransformer: timm's methods keep timm's meaning, DINOv2's get_intermediate_layers works."""
from __future__ import annotations

import dataclasses
import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, golden_inputs, shared_path

import tcore
from tcore.architecture import TCoReArgs, resize_pos_grid
from tcore.checkpoint import to_official_state_dict
from tcore.errors import InvalidInputError, InvalidTypeError


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (LayerScale, registers, position table, norms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if "gamma" in name else 0.05 if "weight" in name and p.ndim > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if name.endswith("norm1.weight") else 0.0))
    return model


def plain_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, num_heads: int, patch: int = 16,
                  masks: torch.Tensor | None = None, antialias: bool = True) -> dict[str, torch.Tensor]:
    """The official forward written out, on the official state dict: conv patchify, mask token,
    CLS, antialiased bicubic position table, registers without position, pre-norm blocks with
    explicit softmax attention and LayerScale, final LayerNorm (eps 1e-6)."""
    b, _, hh, ww = x.shape
    h, w = hh // patch, ww // patch
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2)
    if masks is not None:
        t = torch.where(masks[..., None], sd["mask_token"][None], t)
    dim = t.shape[-1]
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], 1)
    pos = sd["pos_embed"]
    g = int(math.sqrt(pos.shape[1] - 1))
    if (h, w) != (g, g):
        grid = pos[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=antialias)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)], 1)
    t = t + pos
    regs = sd["register_tokens"]
    t = torch.cat([t[:, :1], regs.expand(b, -1, -1), t[:, 1:]], 1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    hd = dim // num_heads
    for i in range(depth):
        p = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
        y = F.layer_norm(t, (dim,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = (y @ p("attn.qkv.weight").T + p("attn.qkv.bias")).reshape(b, -1, 3, num_heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax((q * hd ** -0.5) @ k.transpose(-2, -1), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, -1, dim)
        y = y @ p("attn.proj.weight").T + p("attn.proj.bias")
        t = t + p("ls1.gamma") * y
        y = F.layer_norm(t, (dim,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        y = F.gelu(y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")) @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
        t = t + p("ls2.gamma") * y
    t = F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    r = regs.shape[1]
    return {"cls": t[:, 0], "registers": t[:, 1:1 + r], "patches": t[:, 1 + r:].reshape(b, h, w, dim)}


@pytest.fixture(scope="module")
def vits16():
    """tcore_vits16's network with `_randomize`'s values: built on the meta device, as `_randomize` sets every
    parameter and the network has no buffers (timm's initialisation would be thrown away)."""
    with torch.device("meta"):
        model = tcore.tcore_vits16(pretrained=False)
    assert not list(model.buffers())
    return _randomize(model.to_empty(device="cpu"))


@pytest.mark.parametrize("size", [(224, 224), (480, 880)])
def test_vits16_features_equal_plain_implementation(vits16, size):
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = vits16.forward_features_dict(x)
        ref = plain_forward(to_official_state_dict(vits16.state_dict()), x, num_heads=6)
    for key in ("cls", "registers", "patches"):
        assert ours[key].shape == ref[key].shape
        torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=1e-5)


def test_mask_token_replaces_patches_before_position_embedding(tiny_backbone):
    _randomize(tiny_backbone, seed=3)
    x = torch.randn(2, 3, 64, 96)
    masks = torch.rand(2, 4 * 6, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        ours = tiny_backbone.forward_features_dict(x, masks=masks)
        ref = plain_forward(to_official_state_dict(tiny_backbone.state_dict()), x, num_heads=2, masks=masks)
        unmasked = tiny_backbone.forward_features_dict(x)
    torch.testing.assert_close(ours["patches"], ref["patches"], rtol=0, atol=1e-5)
    assert not torch.allclose(ours["patches"], unmasked["patches"])


def _golden_model(how: str) -> torch.nn.Module:
    """The official tiny ViT loaded through a public path: the class, load_backbone, or timm."""
    ckpt = shared_path("golden", "vit_tiny_official.pth")
    if how == "class":
        return tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=ckpt)
    if how == "load_backbone":
        return tcore.load_backbone(ckpt)
    import timm

    return timm.create_model("tcore_vits16", pretrained=True, embed_dim=64, depth=2, num_heads=2,
                             pretrained_cfg_overlay=dict(file=str(ckpt))).eval()


@pytest.mark.parametrize("how", ["class", "load_backbone", "timm"])
@pytest.mark.parametrize("size", [(224, 224), (480, 880), (320, 480)])
def test_official_tiny_vit_outputs_reproduced_through_public_loading(size, how):
    from safetensors.torch import load_file

    gold = load_file(str(shared_path("golden", "vit_tiny_official_outputs.safetensors")))
    model = _golden_model(how)
    assert type(model) is tcore.TCoReBackbone
    h, w = size
    x = torch.from_numpy(golden_inputs().pattern_image(h, w))[None]
    with torch.no_grad():
        out = model.forward_features_dict(x)
    for key in ("patches", "cls", "registers"):
        torch.testing.assert_close(out[key], gold[f"{key}_{h}x{w}"], rtol=0, atol=1e-5)


def test_non_antialiased_resize_would_miss_the_golden_outputs():
    """The golden outputs pin the resize: bicubic *without* antialias is far off."""
    from safetensors.torch import load_file

    gold = load_file(str(shared_path("golden", "vit_tiny_official_outputs.safetensors")))
    model = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2,
                                pretrained=shared_path("golden", "vit_tiny_official.pth"))
    x = torch.from_numpy(golden_inputs().pattern_image(480, 880))[None]
    with torch.no_grad():
        wrong = plain_forward(to_official_state_dict(model.state_dict()), x, num_heads=2, antialias=False)["patches"]
    assert (wrong - gold["patches_480x880"]).abs().max() > 1e-3


def test_dropping_registers_would_miss_the_golden_outputs():
    from safetensors.torch import load_file

    gold = load_file(str(shared_path("golden", "vit_tiny_official_outputs.safetensors")))
    model = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2,
                                pretrained=shared_path("golden", "vit_tiny_official.pth"))
    sd = to_official_state_dict(model.state_dict())
    sd["register_tokens"] = sd["register_tokens"][:, :0]
    x = torch.from_numpy(golden_inputs().pattern_image(224, 224))[None]
    with torch.no_grad():
        wrong = plain_forward(sd, x, num_heads=2)["patches"]
    assert (wrong - gold["patches_224x224"]).abs().max() > 1e-3


def test_pos_embed_resize_is_antialiased_bicubic_with_explicit_size():
    grid = torch.randn(1, 14, 14, 8)
    ours = resize_pos_grid(grid, (30, 55), "tcore")
    ref = F.interpolate(grid.permute(0, 3, 1, 2), size=(30, 55), mode="bicubic", antialias=True)
    plain = F.interpolate(grid.permute(0, 3, 1, 2), size=(30, 55), mode="bicubic", antialias=False)
    torch.testing.assert_close(ours, ref.permute(0, 2, 3, 1).reshape(1, -1, 8), rtol=0, atol=0)
    assert (ours - plain.permute(0, 2, 3, 1).reshape(1, -1, 8)).abs().max() > 1e-2


def test_square_training_grid_uses_the_stored_table_unchanged():
    grid = torch.randn(1, 14, 14, 8)
    assert torch.equal(resize_pos_grid(grid, (14, 14), "tcore"), grid.reshape(1, 196, 8))


def test_parameter_counts_equal_the_official_ones():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):  # shapes only: the counts without allocating or initialising the weights
        assert count(tcore.tcore_vits16(pretrained=False)) == 21_676_800
        assert count(tcore.tcore_vitb16(pretrained=False)) == 85_820_928


def test_state_dict_names_are_timms_plus_the_class_position_and_the_mask_token(tiny_backbone):
    sd = tiny_backbone.state_dict()
    assert list(sd)[:5] == ["cls_token", "reg_token", "pos_embed", "cls_pos_embed", "mask_token"]
    assert "blocks.1.ls2.gamma" in sd and "norm.bias" in sd and "patch_embed.proj.weight" in sd
    assert sd["pos_embed"].shape == (1, 196, 64) and sd["cls_pos_embed"].shape == (1, 1, 64)
    assert sd["reg_token"].shape == (1, 4, 64) and sd["mask_token"].shape == (1, 64)


def test_official_names_convert_both_ways():
    from tcore.checkpoint import convert_state_dict, read_checkpoint

    official = {k.removeprefix("backbone."): v for k, v in
                read_checkpoint(shared_path("golden", "vit_tiny_official.pth"))["teacher"].items()
                if k.startswith("backbone.")}
    ours = convert_state_dict(official)
    assert torch.equal(ours["cls_pos_embed"], official["pos_embed"][:, :1])
    assert torch.equal(ours["pos_embed"], official["pos_embed"][:, 1:])
    assert torch.equal(ours["reg_token"], official["register_tokens"])
    back = to_official_state_dict(ours)
    assert back.keys() == official.keys() and all(torch.equal(back[k], official[k]) for k in official)


def test_patch_tokens_shape_and_no_prefix_tokens(tiny_backbone):
    x = torch.randn(2, 3, 480, 880)
    with torch.no_grad():
        tokens = tiny_backbone.patch_tokens(x)
        feats = tiny_backbone.forward_features_dict(x)
    assert tokens.shape == (2, 30, 55, 64)
    assert torch.equal(tokens, feats["patches"])
    assert feats["cls"].shape == (2, 64) and feats["registers"].shape == (2, 4, 64)


def test_constructors_return_eval_mode_models(tiny_backbone):
    assert not tiny_backbone.training
    with torch.device("meta"):  # the mode only: no weights allocated
        assert not tcore.tcore_vits16(pretrained=False).training


def test_size_not_multiple_of_patch_is_a_clear_error(tiny_backbone):
    with pytest.raises(ValueError, match=r"multiples of the patch size 16.*480x864"):
        tiny_backbone.patch_tokens(torch.randn(1, 3, 481, 870))


def test_wrong_channel_count_is_a_clear_error(tiny_backbone):
    with pytest.raises(ValueError, match=r"3 RGB channels, got \(1, 4, 64, 64\)"):
        tiny_backbone.patch_tokens(torch.randn(1, 4, 64, 64))


def test_integer_images_are_rejected(tiny_backbone):
    with pytest.raises(TypeError, match="ImageNet-normalised float"):
        tiny_backbone.patch_tokens(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_bad_mask_shape_is_a_clear_error(tiny_backbone):
    with pytest.raises(ValueError, match=r"masks: expected a bool tensor of shape \(1, 16\)"):
        tiny_backbone.forward_features_dict(torch.randn(1, 3, 64, 64), masks=torch.zeros(1, 15, dtype=torch.bool))


def test_bf16_autocast_stays_close_to_fp32(tiny_backbone):
    _randomize(tiny_backbone, seed=5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tiny_backbone.patch_tokens(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny_backbone.patch_tokens(x)
    cos = F.cosine_similarity(low.float().flatten(0, 2), ref.flatten(0, 2), dim=-1)
    assert cos.min() > 0.99


# ------------------------------------------------------------------------ timm's and DINOv2's methods

def test_timm_methods_keep_timms_meaning(tiny_backbone):
    _randomize(tiny_backbone, seed=7)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens = tiny_backbone.forward_features(x)
        feats = tiny_backbone.forward_features_dict(x)
        pooled = tiny_backbone(x)
        final, intermediates = tiny_backbone.forward_intermediates(x)
    assert tokens.shape == (2, 1 + 4 + 4 * 6, 64)  # (B, 1+R+h*w, D): CLS, registers, patches
    assert torch.equal(tokens[:, 0], feats["cls"]) and torch.equal(tokens[:, 5:], feats["patches"].flatten(1, 2))
    assert torch.equal(pooled, tiny_backbone.forward_head(tokens)) and torch.equal(pooled, feats["cls"])
    assert torch.equal(final, tokens) and intermediates[-1].shape == (2, 64, 4, 6)


def test_dinov2_get_intermediate_layers(tiny_backbone):
    _randomize(tiny_backbone, seed=8)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        (last,) = tiny_backbone.get_intermediate_layers(x)
        ((grid, cls),) = tiny_backbone.get_intermediate_layers(x, 1, reshape=True, return_class_token=True)
        both = tiny_backbone.get_intermediate_layers(x, [0, 1], norm=False)
        feats = tiny_backbone.forward_features_dict(x)
    assert torch.equal(last, feats["patches"].flatten(1, 2))  # last block, final norm (DINOv2's default)
    assert grid.shape == (2, 64, 4, 6) and torch.equal(grid, feats["patches"].permute(0, 3, 1, 2))
    assert torch.equal(cls, feats["cls"])
    assert len(both) == 2 and both[0].shape == (2, 24, 64) and not torch.allclose(both[1], last)


def test_timm_feature_extraction_works():
    import timm

    net = timm.create_model("tcore_vits16", features_only=True, out_indices=(0, 1), embed_dim=64, depth=2,
                            num_heads=2)
    maps = net(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 4, 6), (1, 64, 4, 6)]


# ------------------------------------------------------------------ one source for the architecture

_TINY = dict(embed_dim=32, depth=1, num_heads=2)


def _another_value(default):
    """A valid value other than the tiny model's (or the default) for any architecture argument."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return 2 * default
    return default + 0.25


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TCoReArgs)])
def test_every_architecture_argument_round_trips_through_save_pretrained(name, tmp_path):
    """TCoReArgs is the one declaration: a new field is taken by the constructors, recorded by the Hub
    mixin and config.json, and rebuilt by from_pretrained, with no other edit."""
    value = _another_value(_TINY.get(name, getattr(TCoReArgs(), name)))
    model = tcore.TCoReBackbone(**{**_TINY, name: value})
    assert getattr(model.args, name) == value and model._hub_mixin_config[name] == value
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_args"][name] == value
    loaded = tcore.TCoReBackbone.from_pretrained(tmp_path)
    assert loaded.args == model.args
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_the_constructors_signature_lists_the_architecture_arguments():
    params = inspect.signature(tcore.TCoReBackbone).parameters
    for field in dataclasses.fields(TCoReArgs):
        assert params[field.name].default == field.default, field.name
    assert "pretrained" in params


def test_standard_vit_arguments_that_agree_with_the_architecture_are_accepted():
    model = tcore.TCoReBackbone(**_TINY, dynamic_img_size=True, class_token=True, no_embed_class=True, qkv_bias=True,
                                in_chans=3, reg_tokens=4, init_values=1e-5, pos_embed="learn")
    assert model.args == tcore.TCoReBackbone(**_TINY).args


@pytest.mark.parametrize("argument, value", [("class_token", False), ("dynamic_img_size", False), ("in_chans", 1),
                                             ("no_embed_class", False), ("init_values", None),
                                             ("norm_layer", torch.nn.BatchNorm1d)])
def test_standard_vit_arguments_that_contradict_the_architecture_are_refused_by_name(argument, value):
    with pytest.raises(InvalidInputError, match=rf"^TCoReBackbone: {argument}="):
        tcore.TCoReBackbone(**_TINY, **{argument: value})


def test_an_unknown_argument_is_named():
    with pytest.raises(InvalidTypeError, match=r"unknown argument embd_dim=64; the architecture's are \['embed_dim'"):
        tcore.TCoReBackbone(embd_dim=64)


def test_the_training_recipe_builds_its_backbone_from_the_same_arguments():
    from training.config import load_config
    from training.model import build_student

    cfg = load_config(str(REPO / "training/configs/tiny.yaml"), ["model.layerscale_init=0.5", "model.mlp_ratio=2.0"])
    assert isinstance(cfg.model, TCoReArgs)
    backbone = build_student(cfg.model).backbone
    assert backbone.args == TCoReArgs(**cfg.model.as_kwargs())
    assert backbone.blocks[0].mlp.fc1.out_features == 2 * 64 and float(backbone.blocks[0].ls1.gamma.detach()[0]) == 0.5
