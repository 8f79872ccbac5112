"""T-CoRe backbones as timm and Hugging Face citizens: timm's registry and pretrained cfgs, the Hub
mixin (save_pretrained / from_pretrained / push_to_hub, model card), exports stock timm loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import timm
import torch
from helpers import golden_inputs, shared_path
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from timm.data import resolve_data_config

import tcore
from tcore.checkpoint import to_official_state_dict
from tcore.cli import main
from tcore.errors import CheckpointError, InvalidInputError

TCORE_PREPROCESSING = {"input_size": (3, 480, 880), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
                       "std": (0.229, 0.224, 0.225), "crop_pct": 1.0, "crop_mode": "squash"}


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    """A fresh interpreter outside the source tree."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=Path(tempfile.gettempdir()), env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _official_file(model: torch.nn.Module, path: Path) -> Path:
    """The official teacher-checkpoint layout: {"teacher": {"backbone.<official name>": ...}}."""
    torch.save({"teacher": {f"backbone.{k}": v for k, v in to_official_state_dict(model.state_dict()).items()}},
               path)
    return path


def _randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


# ---------------------------------------------------------------------------------- timm registry

_LIST_TCORE_MODELS = "print(timm.list_models('tcore*'), timm.list_models('tcore*', pretrained=True))"
_TCORE_MODELS_LISTED = ("['tcore_vitb16', 'tcore_vits16'] "
                        "['tcore_vitb16.k400', 'tcore_vits16.in1k', 'tcore_vits16.k400']")


def test_import_tcore_then_timm_registers_the_models_in_timm():
    out = _python(f"import tcore, timm; {_LIST_TCORE_MODELS}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == _TCORE_MODELS_LISTED + "\n"


def test_import_timm_then_tcore_registers_the_models_in_timm(stock_timm_then_tcore):
    """The other order, in the fresh interpreter of the stock-timm test below: it imports tcore only
    after it has imported and used timm without it."""
    _, printed = stock_timm_then_tcore
    assert printed[1] == _TCORE_MODELS_LISTED


def test_pretrained_cfgs_name_the_release_file_and_tcores_preprocessing():
    assert timm.models.get_pretrained_cfg("tcore_vits16").tag == "k400"  # the default tag
    for name in tcore.list_models():
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        entry = tcore.get_pretrained(name)
        assert (cfg["hf_hub_id"], cfg["hf_hub_filename"]) == ("yafeng19/T-CORE", entry.filename)
        assert {k: cfg[k] for k in TCORE_PREPROCESSING} == TCORE_PREPROCESSING
        assert cfg["num_classes"] == 0 and cfg["license"] == "apache-2.0"
        assert cfg["paper_ids"] == "arXiv:2503.15096" and cfg["origin_url"] == "https://github.com/yafeng19/T-CORE"


def test_timm_create_model_with_a_local_official_file_equals_the_tcore_constructor(vits16_official_file):
    path, state = vits16_official_file
    via_timm = timm.create_model("tcore_vits16.k400", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path))).eval()
    via_tcore = tcore.tcore_vits16(pretrained=path)
    assert type(via_timm) is type(via_tcore) is tcore.TCoReBackbone
    assert via_timm.state_dict().keys() == via_tcore.state_dict().keys() == state.keys()
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in
               zip(via_timm.state_dict().values(), via_tcore.state_dict().values(), state.values()))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(via_timm.forward_features(x), via_tcore.forward_features(x))
    assert resolve_data_config(model=via_timm) == resolve_data_config(model=via_tcore) == TCORE_PREPROCESSING


def test_timm_loading_keeps_tcores_loud_errors(vitb16_official_file):
    with pytest.raises(CheckpointError) as err:
        timm.create_model("tcore_vits16", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(vitb16_official_file)))
    message = str(err.value)
    assert "vitb16_200ep_K400.pth" in message and "expected embed_dim=384" in message
    assert "found    embed_dim=768" in message and "use tcore.tcore_vitb16" in message


def test_timm_fine_tuning_head_is_left_to_timm(tmp_path):
    """num_classes differs from the weights': timm keeps the new head random, the rest loads."""
    src = _randomized(tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2))
    path = _official_file(src, tmp_path / "tiny.pth")
    net = timm.create_model("tcore_vits16", pretrained=True, num_classes=5, embed_dim=64, depth=2, num_heads=2,
                            pretrained_cfg_overlay=dict(file=str(path)))
    assert net.head.out_features == 5 and torch.equal(net.pos_embed, src.pos_embed)


# ------------------------------------------------------------------------------------ Hub format

def test_save_pretrained_round_trip_is_bit_identical_with_a_model_card(tmp_path):
    model = _randomized(tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2), seed=1)
    model.save_pretrained(tmp_path / "tiny", config={"source": "teacher_checkpoint.pth", "source_sha256": "0" * 64})
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = tcore.TCoReBackbone.from_pretrained(tmp_path / "tiny")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert resolve_data_config(model=loaded) == TCORE_PREPROCESSING

    card = ModelCard.load(tmp_path / "tiny" / "README.md")
    assert card.data.library_name == "tcore" and card.data.license == "apache-2.0"
    assert {"tcore", "arxiv:2503.15096", "pytorch_model_hub_mixin"} <= set(card.data.tags)
    assert "64.7" in card.text and "66.4" in card.text  # the paper's DAVIS J&F of the releases
    assert "tcore.TCoReBackbone.from_pretrained(" in card.text and "patch_tokens" in card.text
    assert "teacher_checkpoint.pth" in card.text and "0" * 64 in card.text


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    import huggingface_hub.hub_mixin as mixin

    pushed = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            pushed.update({p.name: p.read_bytes() for p in Path(folder_path).iterdir()}, repo_id=repo_id)
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(mixin, "HfApi", FakeApi)
    model = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2)
    assert model.push_to_hub("someone/tcore-tiny").endswith("/commit/0")
    assert json.loads(pushed["config.json"])["backbone"] == "TCoReBackbone"
    assert b'from_pretrained("someone/tcore-tiny")' in pushed["README.md"] and "model.safetensors" in pushed


def test_from_pretrained_reads_format_1_folders_with_official_names(tmp_path):
    model = _randomized(tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2), seed=2)
    folder = tmp_path / "v1"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in to_official_state_dict(model.state_dict()).items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "TCoReBackbone", "format_version": 1,
                                                    "model_args": model.arch, "pos_interp": "tcore"}))
    loaded = tcore.TCoReBackbone.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_from_pretrained_refuses_another_kind_of_backbone(tmp_path):
    net = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=56, embed_dim=32,
                            depth=1, num_heads=2)  # the kind is what counts, not the size
    tcore.load_backbone(net, pos_interp="tcore").save_pretrained(tmp_path / "dino")
    with pytest.raises(CheckpointError, match="holds a TimmViTBackbone backbone, not a TCoReBackbone"):
        tcore.TCoReBackbone.from_pretrained(tmp_path / "dino")


# ------------------------------------------- the calls users try first, each in a fresh process

_AS_USERS_CALL = """
import importlib.util, json, shutil, sys
from pathlib import Path

import tcore
importlib.util.find_spec("timm")  # what transformers and optimum do when they are imported
import timm, torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

golden, tmp = sys.argv[1], Path(sys.argv[2])
TINY = dict(embed_dim=64, depth=2, num_heads=2)
out = {"registered": timm.list_models("tcore*"),
       "random_head": type(tcore.tcore_vits16(pretrained=False, **TINY).head).__name__}
ref = tcore.tcore_vits16(pretrained=golden, **TINY)
x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def same(model):
    \"\"\"Its patch tokens equal tcore.tcore_vits16(pretrained=<the same file>)'s.\"\"\"
    with torch.no_grad():
        return torch.equal(model.eval().patch_tokens(x), ref.patch_tokens(x))


out["checkpoint_path="] = same(timm.create_model("tcore_vits16", checkpoint_path=golden, **TINY))
model = timm.create_model("tcore_vits16", dynamic_img_size=True, **TINY)
timm.models.load_checkpoint(model, golden)
out["load_checkpoint"] = same(model)
out["frame"] = list(create_transform(**resolve_model_data_config(model))(Image.new("RGB", (854, 480))).shape)

ref.save_pretrained(tmp / "tiny")
snapshot = tmp / "hub" / "models--someone--tcore-tiny" / "snapshots" / ("c" * 40)
shutil.copytree(tmp / "tiny", snapshot)
(snapshot.parents[1] / "refs").mkdir()
(snapshot.parents[1] / "refs" / "main").write_text("c" * 40)
out["from_pretrained(dir)"] = same(tcore.TCoReBackbone.from_pretrained(tmp / "tiny", local_files_only=True))
out["from_pretrained(repo)"] = same(tcore.TCoReBackbone.from_pretrained("someone/tcore-tiny", revision="c" * 40))
out["local-dir:"] = same(timm.create_model(f"local-dir:{tmp / 'tiny'}", pretrained=True))
out["hf-hub:"] = same(timm.create_model("hf-hub:someone/tcore-tiny", pretrained=True))

for name, kwargs in {"reset_classifier(10)": {}, "num_classes=10, global_pool='avg'": dict(num_classes=10,
                                                                                            global_pool="avg")}.items():
    tuned = timm.create_model("tcore_vits16", **TINY, **kwargs)
    if not kwargs:
        tuned.reset_classifier(10)
    torch.nn.init.normal_(tuned.head.weight)
    tuned.save_pretrained(tmp / "tuned")
    back = [tcore.TCoReBackbone.from_pretrained(tmp / "tuned"), timm.create_model(f"local-dir:{tmp / 'tuned'}",
                                                                                  pretrained=True)]
    with torch.no_grad():
        out[name] = [list(tuned.eval()(x).shape)] + [torch.equal(b.eval()(x), tuned(x)) for b in back]
    shutil.rmtree(tmp / "tuned")

snippet = (tmp / "tiny" / "README.md").read_text().split("```python\\n")[1].split("```")[0]
namespace = {}
exec(snippet, namespace)  # the model card's usage, as written
out["card snippet"] = [list(namespace["tokens"].shape), type(namespace["same"]).__name__]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def as_users_call(tmp_path_factory):
    """The timm and Hugging Face calls of issue 19, run in one fresh interpreter on the official tiny ViT."""
    tmp = tmp_path_factory.mktemp("as_users_call")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "hub")}
    run = subprocess.run([sys.executable, "-c", _AS_USERS_CALL, str(shared_path("golden", "vit_tiny_official.pth")),
                          str(tmp)], capture_output=True, text=True, cwd=tmp, env=env)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_registration_survives_a_find_spec_probe_before_timm_is_imported(as_users_call):
    assert as_users_call["registered"] == ["tcore_vitb16", "tcore_vits16"]
    assert as_users_call["random_head"] == "Identity"  # no 1000-class head


def test_timm_loads_the_released_layout_through_checkpoint_path_and_load_checkpoint(as_users_call):
    assert as_users_call["checkpoint_path="] is True and as_users_call["load_checkpoint"] is True


def test_timms_data_config_keeps_the_whole_frame(as_users_call):
    assert as_users_call["frame"] == [3, 480, 880]  # a 480x854 frame, stretched to the paper's size, not cropped


def test_one_hub_format_loads_in_tcore_and_in_timm(as_users_call):
    for call in ("from_pretrained(dir)", "from_pretrained(repo)", "local-dir:", "hf-hub:"):
        assert as_users_call[call] is True, call


@pytest.mark.parametrize("how", ["reset_classifier(10)", "num_classes=10, global_pool='avg'"])
def test_a_fine_tuned_model_comes_back_with_its_head(as_users_call, how):
    assert as_users_call[how] == [[1, 10], True, True]  # from_pretrained, timm local-dir:


def test_the_model_cards_usage_runs_as_written(as_users_call):
    assert as_users_call["card snippet"] == [[1, 30, 55, 64], "TCoReBackbone"]


def test_the_model_card_installs_from_the_repository_and_carries_the_papers_numbers(tmp_path):
    model = tcore.TCoReBackbone(embed_dim=32, depth=1, num_heads=2)
    model.release = "tcore_vits16.in1k"
    model.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert 'pip install "tcore @ git+https://github.com/yafeng19/T-CORE"' in card.text
    assert card.data.base_model == "yafeng19/T-CORE" and card.data.datasets == ["ILSVRC/imagenet-1k"]
    results = {(r.dataset_name, r.metric_name): r for r in card.data.eval_results}
    assert results[("DAVIS-2017 val", "J&F")].metric_value == 64.1 and results[("VIP", "mIoU")].metric_value == 39.7
    assert results[("JHMDB", "PCK@0.1")].metric_value == 46.2 and len(results) == 6
    assert all(r.verified is False and r.source_name.startswith("reported by the paper") for r in results.values())


# ------------------------------------------------------------------------- exports for stock timm

_STOCK_TIMM_THEN_TCORE = """
import pathlib, sys, timm, torch
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model.forward_features(x), sys.argv[3])
card = (pathlib.Path(sys.argv[1]) / "README.md").read_text()
exec(card.split("```python\\n")[1].split("```")[0], {})  # the export's model card usage, as written
print(type(model).__name__, timm.data.resolve_data_config(model=model)["interpolation"], "tcore" in sys.modules)
import tcore  # only now, after timm
""" + _LIST_TCORE_MODELS


@pytest.fixture(scope="module")
def stock_timm_then_tcore(tmp_path_factory) -> tuple[Path, list[str]]:
    """`tcore convert --format timm` of the official tiny ViT (in this process), then one fresh interpreter
    outside the source tree that loads the export with stock timm, runs its model card's usage, and only
    then imports tcore and lists timm's tcore models: (the work folder, the lines it printed)."""
    tmp = tmp_path_factory.mktemp("stock_timm")
    assert main(["convert", str(shared_path("golden", "vit_tiny_official.pth")), "-o", str(tmp / "timm"),
                 "--format", "timm"]) == 0
    torch.save(torch.from_numpy(golden_inputs().pattern_image(480, 880))[None], tmp / "x.pt")
    run = _python(_STOCK_TIMM_THEN_TCORE, str(tmp / "timm"), str(tmp / "x.pt"), str(tmp / "tokens.pt"))
    assert run.returncode == 0, run.stderr
    return tmp, run.stdout.splitlines()


def test_timm_export_loads_in_stock_timm_without_tcore(stock_timm_then_tcore):
    tmp, printed = stock_timm_then_tcore
    ckpt = shared_path("golden", "vit_tiny_official.pth")
    config = json.loads((tmp / "timm" / "config.json").read_text())
    assert config["architecture"] == "vit_small_patch14_reg4_dinov2" and config["model_args"]["patch_size"] == 16
    assert config["source"] == "vit_tiny_official.pth" and len(config["source_sha256"]) == 64

    assert printed[0].split() == ["VisionTransformer", "bilinear", "False"]  # stock timm, tcore never imported
    tokens = torch.load(tmp / "tokens.pt")
    x = torch.load(tmp / "x.pt")
    with torch.no_grad():
        ours = tcore.load_backbone(ckpt).forward_features(x)
    torch.testing.assert_close(tokens, ours, rtol=0, atol=1e-6)
    gold = load_file(str(shared_path("golden", "vit_tiny_official_outputs.safetensors")))
    torch.testing.assert_close(tokens[:, 5:].reshape(1, 30, 55, 64), gold["patches_480x880"], rtol=0, atol=1e-5)


def test_load_backbone_reads_a_timm_export_folder(tmp_path):
    from tcore.hub import export_for_timm

    model = _randomized(tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2), seed=3)
    export_for_timm(model, tmp_path / "timm")
    again = tcore.load_backbone(tmp_path / "timm")
    assert isinstance(again, tcore.TimmViTBackbone) and again.pos_interp == "tcore"
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(again.patch_tokens(x), model.patch_tokens(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("net", [
    lambda: timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=56,
                              embed_dim=32, depth=1, num_heads=2),  # a registered name at another size
    lambda: timm.models.VisionTransformer(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=3,
                                          num_classes=0, reg_tokens=2, no_embed_class=True),  # the class itself
    lambda: timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, global_pool="avg",
                              embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0),  # a head, fc_norm, another MLP
], ids=["dinov2-reg4-resized", "VisionTransformer-class", "head-avg-pool"])
def test_a_timm_vit_of_any_size_saves_and_loads_back_the_same_features(net, tmp_path):
    backbone = tcore.load_backbone(net(), pos_interp="tcore")
    backbone.save_pretrained(tmp_path / "saved")
    again = tcore.load_backbone(tmp_path / "saved")
    x = torch.randn(1, 3, 4 * backbone.patch_size, 6 * backbone.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again.patch_tokens(x), backbone.patch_tokens(x))
    assert again.model.num_classes == backbone.model.num_classes


def test_save_pretrained_refuses_a_timm_vit_its_config_would_not_rebuild(tmp_path):
    from timm.layers import SwiGLU

    net = timm.models.VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                        num_classes=0, mlp_layer=SwiGLU)  # an MLP the arguments do not record
    with pytest.raises(InvalidInputError, match=r"^save_pretrained: this VisionTransformer cannot be described .* "
                                                r"differs at \d+ parameter\(s\): blocks\.0\.mlp\."):
        tcore.load_backbone(net, pos_interp="tcore").save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "model.safetensors").exists()
