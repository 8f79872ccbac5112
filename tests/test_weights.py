"""Weights: official layouts load strictly, every mismatch is a clear error, the Hub cache and the
Hugging Face format round-trip, torch.hub works from a clone."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, free_port, shared_path

import tcore
from tcore import weights as W
from tcore.architecture import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD
from tcore.checkpoint import convert_state_dict, to_official_state_dict
from tcore.errors import CheckpointError, InvalidInputError, WeightsUnavailableError
from tcore.files import sha256sum


def official_layout(backbone: torch.nn.Module) -> dict:
    """What the official training code saves: {"teacher": {"backbone.*", "dino_head.*"}}, official names."""
    teacher = {f"backbone.{k}": v.clone() for k, v in to_official_state_dict(backbone.state_dict()).items()}
    teacher["dino_head.mlp.0.weight"] = torch.randn(8, backbone.embed_dim)
    teacher["dino_head.last_layer.weight_g"] = torch.ones(16, 1)
    return {"teacher": teacher}


@pytest.fixture
def tiny_file(tmp_path, tiny_backbone):
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save(official_layout(tiny_backbone), path)
    return path


def features(model, size=(64, 96)):
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.patch_tokens(x)


def test_official_teacher_layout_loads_with_identical_features(tiny_backbone, tiny_file):
    loaded = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=tiny_file)
    assert torch.equal(features(loaded), features(tiny_backbone))


def test_vits16_official_key_names_load_strictly(vits16_official_file):
    path, state = vits16_official_file
    loaded = tcore.tcore_vits16(pretrained=str(path))
    assert list(loaded.state_dict()) == list(state)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), loaded.state_dict().values()))


@pytest.mark.parametrize("wrap", ["model", "state_dict", "bare", "module_prefix", "fsdp_prefix"])
def test_known_layouts_and_prefixes_are_accepted(tiny_backbone, tmp_path, wrap):
    sd = tiny_backbone.state_dict()
    obj = {
        "model": {"model": {f"backbone.{k}": v for k, v in sd.items()}},
        "state_dict": {"state_dict": dict(sd)},
        "bare": dict(sd),
        "module_prefix": {"teacher": {f"module.backbone.{k}": v for k, v in sd.items()}},
        "fsdp_prefix": {"teacher": {f"_fsdp_wrapped_module.backbone.{k}": v for k, v in sd.items()}},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=path)
    assert torch.equal(features(loaded), features(tiny_backbone))


def test_prefixes_are_stripped_only_at_the_start():
    sd = {"module.backbone.cls_token": torch.zeros(1), "blocks.0.xmodule.weight": torch.zeros(1),
          "dino_head.mlp.0.weight": torch.zeros(1)}
    assert set(convert_state_dict(sd)) == {"cls_token", "blocks.0.xmodule.weight"}


def test_unexpected_key_is_an_error_not_ignored(tiny_backbone, tmp_path):
    ckpt = official_layout(tiny_backbone)
    ckpt["teacher"]["backbone.extra_param"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"x\.pth.*strict.*unexpected \['extra_param'\]"):
        tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=tmp_path / "x.pth")


def test_missing_key_is_an_error(tiny_backbone, tmp_path):
    ckpt = official_layout(tiny_backbone)
    del ckpt["teacher"]["backbone.mask_token"]
    torch.save(ckpt, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"missing \['mask_token'\]"):
        tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=tmp_path / "x.pth")


def test_missing_register_tokens_is_named(tiny_backbone, tmp_path):
    ckpt = official_layout(tiny_backbone)
    del ckpt["teacher"]["backbone.register_tokens"]
    torch.save(ckpt, tmp_path / "noreg.pth")
    with pytest.raises(CheckpointError, match=r"(?s)noreg\.pth.*registers=4.*registers=0.*register_tokens"):
        tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=tmp_path / "noreg.pth")


def test_vitb_file_into_vits_names_file_expected_found_and_the_right_constructor(vitb16_official_file):
    with pytest.raises(CheckpointError) as err:
        tcore.tcore_vits16(pretrained=vitb16_official_file)
    message = str(err.value)
    assert "vitb16_200ep_K400.pth" in message and "tcore_vits16" in message
    assert "expected embed_dim=384" in message and "found    embed_dim=768" in message
    assert "use tcore.tcore_vitb16" in message


def test_truncated_file_says_so(tiny_file):
    data = tiny_file.read_bytes()
    tiny_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=tiny_file)


class _Arbitrary:
    pass


def test_pickled_objects_are_refused_by_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"teacher": _Arbitrary()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refuses to unpickle"):
        tcore.tcore_vits16(pretrained=path)


def test_unknown_layout_lists_the_top_level_keys(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"epoch": torch.tensor(3), "weights": {"a": torch.zeros(1)}, "opt": {}}, path)
    with pytest.raises(CheckpointError, match=r"top-level keys found: \['epoch', 'weights', 'opt'\]"):
        tcore.tcore_vits16(pretrained=path)


def test_missing_file_is_file_not_found():
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        tcore.tcore_vits16(pretrained="nope.pth")


def test_unknown_weights_tag_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"weights='jft'.*\['in1k', 'k400'\]"):
        tcore.tcore_vits16(pretrained=True, weights="jft")


def test_registry_entries_are_complete():
    names = tcore.list_models()
    assert names == ["tcore_vits16.k400", "tcore_vits16.in1k", "tcore_vitb16.k400"]
    for name in names:
        entry = tcore.get_pretrained(name)
        assert entry.repo_id == "yafeng19/T-CORE" and entry.filename.startswith("ckpt/")
        assert entry.arch in ARCHITECTURES and entry.name == name
        assert 30 < entry.scores.davis_jf < 100 and entry.sha256 in (None,) or len(entry.sha256) == 64
    assert tcore.get_pretrained("tcore_vits16").tag == "k400"
    assert tcore.get_pretrained("tcore_vits16.in1k").scores.vip_miou == 39.7


# ------------------------------------------------------------------------- download and cache

def fake_hub_cache(root: Path, repo_id: str, files: dict[str, Path | bytes], commit: str = "a" * 40) -> Path:
    """The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, content in files.items():
        target = repo / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
    return root


def test_offline_with_nothing_cached_says_how_to_fix_it(tmp_path):
    with pytest.raises(WeightsUnavailableError) as err:
        W.download("tcore_vits16", cache_dir=str(tmp_path))
    message = str(err.value)
    assert "tcore download tcore_vits16.k400" in message
    assert "pretrained='path/to/file.pth'" in message and "--model" in message
    assert "HF_HUB_OFFLINE" in message and "ckpt/vits16_400ep_K400.pth" in message


def test_constructor_offline_error_is_the_same_clear_error(monkeypatch, tmp_path):
    real = W._hf_hub_download
    monkeypatch.setattr(W, "_hf_hub_download", lambda *a, **k: real(*a, **{**k, "cache_dir": str(tmp_path)}))
    with pytest.raises(WeightsUnavailableError, match="Three ways to fix it"):
        tcore.tcore_vitb16(pretrained=True)


def test_cached_release_loads_offline_through_hf_hub_download(monkeypatch, tmp_path, vits16_official_file):
    ckpt, state = vits16_official_file
    cache = fake_hub_cache(tmp_path / "hub", "yafeng19/T-CORE", {"ckpt/vits16_100ep_INET.pth": ckpt})
    real = W._hf_hub_download
    monkeypatch.setattr(W, "_hf_hub_download", lambda *a, **k: real(*a, **{**k, "cache_dir": str(cache)}))
    loaded = tcore.tcore_vits16(pretrained=True, weights="in1k")
    assert torch.equal(loaded.pos_embed, state["pos_embed"])
    assert loaded.release == "tcore_vits16.in1k"  # what save_pretrained's model card names as its base model


def test_pinned_sha256_mismatch_is_an_error(monkeypatch, tmp_path):
    cache = fake_hub_cache(tmp_path, "yafeng19/T-CORE", {"ckpt/vitb16_200ep_K400.pth": b"not the file"})
    entry = dataclasses.replace(W._PRETRAINED["tcore_vitb16"]["k400"], sha256="0" * 64)
    monkeypatch.setitem(W._PRETRAINED["tcore_vitb16"], "k400", entry)
    with pytest.raises(CheckpointError, match="sha256 .* differs from the registry's 0000"):
        W.download("tcore_vitb16", cache_dir=str(cache))


# --------------------------------------------------------------------- Hugging Face format

def test_save_pretrained_then_from_pretrained_gives_identical_outputs(tiny_backbone, tmp_path):
    tiny_backbone.save_pretrained(tmp_path / "export", config={"source": "test"})
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["backbone"] == "TCoReBackbone" and config["pos_interp"] == "tcore"
    assert config["architecture"] == "tcore_vits16"  # timm's name: timm.create_model("local-dir:...") reads it too
    assert config["model_args"]["num_heads"] == 2 and config["source"] == "test"
    loaded = tcore.TCoReBackbone.from_pretrained(str(tmp_path / "export"))
    assert torch.equal(features(loaded), features(tiny_backbone))
    also = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=tmp_path / "export")
    assert torch.equal(features(also), features(tiny_backbone))


def test_from_pretrained_hub_repo_id_through_the_cache(tiny_backbone, tmp_path):
    tiny_backbone.save_pretrained(tmp_path / "export")
    cache = fake_hub_cache(tmp_path / "hub", "someone/tcore-tiny", {
        "config.json": tmp_path / "export" / "config.json",
        "model.safetensors": tmp_path / "export" / "model.safetensors"})
    loaded = tcore.TCoReBackbone.from_pretrained("someone/tcore-tiny", cache_dir=str(cache))
    assert torch.equal(features(loaded), features(tiny_backbone))


def test_from_pretrained_offline_uncached_repo_says_how_to_fix_it(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="Three ways"):
        tcore.TCoReBackbone.from_pretrained("someone/absent", cache_dir=str(tmp_path))


def test_safetensors_file_with_official_names_loads(tiny_backbone, tmp_path):
    from safetensors.torch import save_file

    save_file({f"backbone.{k}": v.contiguous() for k, v in tiny_backbone.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    loaded = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=tmp_path / "w.safetensors")
    assert torch.equal(features(loaded), features(tiny_backbone))


def test_state_dict_can_be_passed_directly(tiny_backbone):
    loaded = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=official_layout(tiny_backbone))
    assert torch.equal(features(loaded), features(tiny_backbone))


def test_inspect_reports_layout_architecture_and_sha256(tiny_file):
    report = tcore.inspect_checkpoint(tiny_file)
    assert report["layout"] == "file -> ['teacher']"
    assert report["architecture"]["embed_dim"] == 64 and report["architecture"]["num_register_tokens"] == 4
    assert report["matches"] == "_tcore_vit_tiny" and report["loads_strictly"] is True
    assert report["sha256"] == sha256sum(tiny_file) and report["dropped_keys"] == ["dino_head"]


# ---------------------------------------------------------------------------- other backbones

def _checksum(model, h: int, w: int) -> dict:
    """What the shared test data's tools/check_dinov2_vits14.py computes for its synthetic input."""
    y, x = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    img = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * (x * (c + 1) / 97.0 + y / 53.0))
                    * np.cos(2 * np.pi * y * (c + 2) / 71.0) for c in range(3)], 0)
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    img = (img - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        f = model.forward_features_dict(torch.from_numpy(img[None].astype(np.float32)))
    full = torch.cat([f["cls"][:, None], f["patches"].flatten(1, 2)], 1).double()
    return dict(mean=float(full.mean()), abs_mean=float(full.abs().mean()), std=float(full.std()),
                patch_norm_mean=float(full[0, 1:].norm(dim=-1).mean()), cls_first4=full[0, 0, :4].tolist(),
                shape=list(full.shape))


@pytest.fixture(scope="module")
def dinov2():
    path = shared_path("weights", "dinov2_vits14_imgfocus.safetensors")
    return tcore.load_backbone(path, pos_interp="dinov2"), json.loads(path.with_suffix(".json").read_text())


@pytest.mark.parametrize("size", [(224, 224), (476, 854)])
def test_dinov2_vits14_reproduces_the_published_checksums(dinov2, size):
    model, meta = dinov2
    expected = meta["expected_checksums"][f"{size[0]}x{size[1]}/dinov2/synthetic"]
    got = _checksum(model, *size)
    assert got["shape"] == expected["shape"]
    for key in ("mean", "abs_mean", "std", "patch_norm_mean"):  # the tool's own tolerance rule
        assert abs(got[key] - expected[key]) <= 1e-4 + 1e-4 * abs(expected[key]), key
    assert max(abs(a - b) for a, b in zip(got["cls_first4"], expected["cls_first4"])) <= 2e-3


def test_dinov2_with_timm_resize_would_not_match(dinov2):
    model, meta = dinov2
    wrong = tcore.load_backbone(model.model, pos_interp="tcore")
    got = _checksum(wrong, 224, 224)
    expected = meta["expected_checksums"]["224x224/dinov2/synthetic"]
    assert abs(got["patch_norm_mean"] - expected["patch_norm_mean"]) > 1e-2 or \
        max(abs(a - b) for a, b in zip(got["cls_first4"], expected["cls_first4"])) > 2e-3


def test_load_backbone_reads_architecture_and_family_from_the_file(dinov2):
    model, _ = dinov2
    assert model.patch_size == 14 and model.embed_dim == 384 and model.num_register_tokens == 0
    assert model.pos_interp == "dinov2"
    assert model.patch_tokens(torch.zeros(1, 3, 28, 42)).shape == (1, 2, 3, 384)


def test_timm_backbone_save_pretrained_round_trip(tmp_path):
    import timm

    net = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=56)
    model = tcore.load_backbone(net)
    assert model.pos_interp == "tcore" and model.num_register_tokens == 4
    model.save_pretrained(tmp_path / "dino")
    assert json.loads((tmp_path / "dino" / "config.json").read_text())["pos_interp"] == "tcore"
    again = tcore.load_backbone(tmp_path / "dino")
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        assert torch.equal(again.patch_tokens(x), model.patch_tokens(x))


def test_timm_backbone_rejects_masks(dinov2):
    with pytest.raises(ValueError, match="no mask token"):
        dinov2[0].forward_features_dict(torch.zeros(1, 3, 28, 28), masks=torch.zeros(1, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------- torch.hub

def test_torch_hub_local_random_weights():
    model = torch.hub.load(str(REPO), "tcore_vits16", source="local", pretrained=False)
    assert isinstance(model, tcore.TCoReBackbone) and model.embed_dim == 384


def test_torch_hub_local_with_a_local_checkpoint(vitb16_official_file):
    saved = torch.load(vitb16_official_file, mmap=True, weights_only=True)["teacher"]
    model = torch.hub.load(str(REPO), "tcore_vitb16", source="local", pretrained=str(vitb16_official_file))
    assert isinstance(model, tcore.TCoReBackbone) and model.embed_dim == 768
    assert torch.equal(model.cls_token, saved["backbone.cls_token"].float())  # a float16 file, a float32 model
    assert torch.equal(model.blocks[11].mlp.fc2.weight, saved["backbone.blocks.11.mlp.fc2.weight"].float())


def test_hubconf_exposes_only_the_two_constructors():
    """torch.hub.list shows every public callable of hubconf.py: only the constructors."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    public = sorted(n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_"))
    assert public == ["tcore_vitb16", "tcore_vits16"]
    assert "Example" in hub.tcore_vits16.__doc__ and "trust_repo=True" in hub.tcore_vitb16.__doc__


# ---------------------------------------------------------------------------- one repository-id rule

@pytest.mark.parametrize("text, expected", [("org/name", True), ("yafeng19/T-CORE", True), ("./org", False),
                                            ("/org/name", False), ("~/name", False), ("a/b/c", False),
                                            ("hf-hub:org/name", False), ("name", False)])
def test_one_repository_id_rule(text, expected):
    from tcore.hub import is_repo_id

    assert is_repo_id(text) is expected


def test_an_existing_local_path_is_never_a_repository_id(tmp_path, monkeypatch):
    from tcore.hub import fetch_folder, is_repo_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "weights.pth").write_bytes(b"")
    assert not is_repo_id("org/weights.pth")
    with pytest.raises(FileNotFoundError, match="not a Hub repo id"):
        fetch_folder("org/weights.pth")


def test_imagenet_statistics_live_in_one_place():
    from tcore.constants import IMAGENET_MEAN as mean, IMAGENET_STD as std
    from training.augment import normalize

    assert W.Preprocessing().mean == IMAGENET_MEAN == mean and W.Preprocessing().std == IMAGENET_STD == std
    assert tcore.TCoReBackbone(embed_dim=64, depth=1, num_heads=2).mean == mean
    white = normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten()
    assert torch.allclose(white, (1 - torch.tensor(mean)) / torch.tensor(std))


# ------------------------------------------------------------------------- model files, checked

def _saved(tmp_path: Path, **config_changes) -> Path:
    """A tiny save_pretrained folder whose config.json has `config_changes` applied (None deletes a key)."""
    folder = tmp_path / "model"
    tcore.TCoReBackbone(embed_dim=32, depth=1, num_heads=2).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in config_changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("change, message", [
    (dict(model_args=None), r"model_args is missing; expected an object"),
    (dict(model_args=[32, 1, 2]), r"model_args is a list; expected an object"),
    (dict(model_args={"embed_dim": "32", "depth": 1, "num_heads": 2}),
     r"model_args\.embed_dim is '32' \(str\); expected int"),
    (dict(model_args={"embed_dim": 32, "depth": 1.5, "num_heads": 2}),
     r"model_args\.depth is 1\.5 \(float\); expected int"),
    (dict(model_args={"embed_dim": 32, "depth": 1, "num_heads": 2, "embd_dim": 8}), r"unknown key\(s\) \['embd_dim'\]"),
    (dict(backbone="Something"), r"'backbone' is 'Something'"),
    (dict(format_version="3"), r"format_version is '3'; expected an int"),
])
def test_a_broken_config_json_is_one_line_naming_the_file_and_the_key(tmp_path, change, message):
    folder = _saved(tmp_path, **change)
    with pytest.raises(CheckpointError, match=message) as err:
        tcore.TCoReBackbone.from_pretrained(folder)
    assert str(err.value).startswith(str(folder / "config.json")) and "\n" not in str(err.value)


@pytest.mark.parametrize("content, message", [("[1, 2]", "expected a JSON object"), ("{not json", "not valid JSON")])
def test_a_config_json_that_is_not_an_object_is_named(tmp_path, content, message):
    folder = _saved(tmp_path)
    (folder / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message):
        tcore.load_backbone(folder)


@pytest.mark.parametrize("call", [lambda: tcore.TCoReBackbone.from_pretrained("org/na me"),
                                  lambda: tcore.tcore_vits16(pretrained="org/na me"),
                                  lambda: tcore.load_backbone("org/na me")])
def test_an_invalid_repo_id_is_named_as_such(call):
    with pytest.raises(InvalidInputError, match=r"'org/na me': not a valid Hugging Face repo id") as err:
        call()
    assert "cannot be downloaded" not in str(err.value)


def test_weights_with_nan_or_inf_are_refused_naming_the_file_and_the_tensor(tiny_backbone, tmp_path):
    ckpt = official_layout(tiny_backbone)
    ckpt["teacher"]["backbone.blocks.1.attn.qkv.weight"][0, :3] = torch.tensor([float("nan"), float("inf"), 1.0])
    torch.save(ckpt, tmp_path / "diverged.pth")
    with pytest.raises(CheckpointError, match=r"diverged\.pth: tensor 'blocks\.1\.attn\.qkv\.weight' holds 2 NaN/inf"):
        tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2, pretrained=tmp_path / "diverged.pth")


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_every_file_written_gets_the_umasks_permissions(tmp_path, umask):
    from tcore.hub import export_for_timm

    model = tcore.TCoReBackbone(embed_dim=32, depth=1, num_heads=2)
    old = os.umask(umask)
    try:
        model.save_pretrained(tmp_path / "tcore")
        export_for_timm(model, tmp_path / "timm")
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("*/*")}
    assert len(modes) == 6 and set(modes.values()) == {0o666 & ~umask}, modes


def test_from_pretrained_takes_the_standard_hub_arguments(tiny_backbone, tmp_path):
    tiny_backbone.save_pretrained(tmp_path / "export")
    cache = fake_hub_cache(tmp_path / "hub", "someone/tcore-tiny", {
        "config.json": tmp_path / "export" / "config.json",
        "model.safetensors": tmp_path / "export" / "model.safetensors"}, commit="c" * 40)
    hub_args = dict(local_files_only=True, token="hf_not_used_offline", revision="c" * 40, force_download=False)
    loaded = tcore.TCoReBackbone.from_pretrained("someone/tcore-tiny", cache_dir=cache, **hub_args)
    local = tcore.TCoReBackbone.from_pretrained(tmp_path / "export", cache_dir=cache, **hub_args)
    assert torch.equal(features(loaded), features(tiny_backbone)) and torch.equal(features(local), features(loaded))


# ------------------------------------------------------------------- no network: one message, at once

_NO_NETWORK = """
import contextlib, functools, io, json, sys, time
import timm, torch
import tcore, tcore.demo
from tcore.cli import main

repo, out = sys.argv[1], sys.argv[2]
# the demo's built-in clip, made small: what is checked is how the model's absence is reported
tcore.demo.make_demo_clip = functools.partial(tcore.demo.make_demo_clip, n_frames=2, size=(32, 32))
calls = {
    "tcore.tcore_vits16()": lambda: tcore.tcore_vits16(),
    "timm.create_model('tcore_vits16.in1k', pretrained=True)":
        lambda: timm.create_model("tcore_vits16.in1k", pretrained=True),
    "torch.hub.load(source='local')": lambda: torch.hub.load(repo, "tcore_vitb16", source="local"),
    "TCoReBackbone.from_pretrained('org/name')": lambda: tcore.TCoReBackbone.from_pretrained("someone/absent"),
    "load_backbone(<timm name>)": lambda: tcore.load_backbone("vit_small_patch14_dinov2.lvd142m"),
    "tcore demo": lambda: main(["demo", "-o", out, "--quiet"]),
}
results = {}
for name, call in calls.items():
    start, stderr = time.perf_counter(), io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            outcome = f"returned {call()!r}"
        except Exception as err:
            outcome = f"{type(err).__name__}: {err}"
    results[name] = dict(outcome=outcome, stderr=stderr.getvalue(), seconds=time.perf_counter() - start)
print(json.dumps(results))
"""


def test_without_network_every_entry_point_fails_at_once_with_the_fix_list(tmp_path):
    """No HF_HUB_OFFLINE, an endpoint that refuses connections, an empty cache: each entry point
    names what it could not get and the three fixes, without the Hub client's ~25 s of retries."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-c", _NO_NETWORK, str(REPO), str(tmp_path / "demo")], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for name, result in results.items():
        text = result["outcome"] + result["stderr"]
        assert "Three ways to fix it" in text and "Connect" in text, (name, text)
        assert "Retrying" not in run.stderr + text, name
        assert result["seconds"] < 10, (name, result["seconds"])  # the retries alone take ~25 s
    assert results["tcore.tcore_vits16()"]["outcome"].startswith(
        "WeightsUnavailableError: could not get tcore_vits16.k400")
    assert "could not get tcore_vits16.in1k" in results["timm.create_model('tcore_vits16.in1k', pretrained=True)"][
        "outcome"]
    assert "timm model 'vit_small_patch14_dinov2.lvd142m'" in results["load_backbone(<timm name>)"]["outcome"]
    assert results["tcore demo"]["outcome"] == "returned 1"
    assert results["tcore demo"]["stderr"].startswith("tcore: error: could not get tcore_vits16.k400")
