"""The command line prints what its documentation says: `tcore models` the README's columns,
`tcore inspect` what a file is and whether `load_backbone` loads it (T-CoRe, DINOv2 and timm files),
J&F in percent with one decimal everywhere, and a closed pipe ends a command quietly."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from helpers import shared_path

from tcore.cli import main


def test_models_prints_the_papers_j_f_and_pck_columns_the_readme_promises(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "percent" in lines[0]
    assert lines[1].split()[3:10] == ["J&F", "J", "F", "mIoU", "PCK@0.1", "PCK@0.2", "file"]
    row = next(line.split() for line in lines if line.startswith("tcore_vits16.k400"))
    assert row[3:9] == ["64.7", "63.5", "66.0", "37.8", "47.0", "75.2"]


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly():
    """`tcore models --json | head -1`, with the reader gone before the first write."""
    proc = subprocess.Popen([sys.executable, "-m", "tcore", "models", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""  # 128 + SIGPIPE, as `yes | head -1`; no "Broken pipe" line


def _inspect(path: Path, capsys) -> dict:
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_says_what_a_tcore_checkpoint_is_and_that_load_backbone_loads_it(capsys):
    report = _inspect(shared_path("golden", "vit_tiny_official.pth"), capsys)
    assert report["what"].startswith("a teacher checkpoint of a ViT in the official DINOv2/T-CoRe layout: width 64, "
                                     "depth 2, patch 16, 4 registers, position table 14x14")
    assert report["load_backbone"]["loads"] is True
    assert report["load_backbone"]["as"].startswith("TCoReBackbone(embed_dim=64, depth=2, num_heads=2, patch_size=16, "
                                                    "num_register_tokens=4, mlp_ratio=4.0, img_size=224")
    assert report["matches"] == "_tcore_vit_tiny" and report["loads_strictly"]


def _dinov2_like(tmp_path: Path) -> dict[str, Path]:
    """Tiny DINOv2-style ViTs (patch 14, no registers, LayerScale, a 3x3 table with a class slot) in
    the two layouts DINOv2 files come in: torch.hub's official one and timm's (as the shared
    dinov2_vits14 safetensors, which inspect described with pos_grid=None and loads_strictly False)."""
    from safetensors.torch import save_file
    from timm.models import VisionTransformer

    from tcore import TCoReBackbone
    from tcore.checkpoint import to_official_state_dict

    hub = TCoReBackbone(embed_dim=32, depth=1, num_heads=2, patch_size=14, num_register_tokens=0, img_size=42)
    timm_vit = VisionTransformer(img_size=42, patch_size=14, embed_dim=32, depth=1, num_heads=2, num_classes=0,
                                 init_values=1e-5)
    torch.save(to_official_state_dict(hub.state_dict()), tmp_path / "dinov2_hub.pth")
    save_file(timm_vit.state_dict(), str(tmp_path / "dinov2_timm.safetensors"))
    return {"hub": tmp_path / "dinov2_hub.pth", "timm": tmp_path / "dinov2_timm.safetensors"}


def test_inspect_of_dinov2_files_finds_the_grid_and_says_load_backbone_loads_them(tmp_path, capsys):
    files = _dinov2_like(tmp_path)
    report = _inspect(files["hub"], capsys)
    assert report["key_layout"] == "official DINOv2/T-CoRe" and report["architecture"]["pos_grid"] == 3
    assert report["load_backbone"]["loads"] and report["load_backbone"]["as"].startswith("TCoReBackbone(")
    assert main(["inspect", str(files["timm"])]) == 0
    text = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if " " in line.strip())
    assert text["what"].startswith("a state dict of a ViT in the timm layout: width 32, depth 1, patch 14, no "
                                   "registers, position table 3x3 plus a class slot")
    assert "pos_grid=3" in text["architecture"] and text["tcore_arch"] == "none" and "loads_strictly" not in text
    assert text["load_backbone"].startswith("loads it: TimmViTBackbone, timm VisionTransformer (patch 14, 0 registers")


def test_inspect_of_a_timm_file_and_of_a_file_that_is_no_backbone(tmp_path, capsys):
    from safetensors.torch import save_file
    from timm.models import VisionTransformer

    timm_vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=0)
    save_file(timm_vit.state_dict(), str(tmp_path / "timm_vit.safetensors"))
    report = _inspect(tmp_path / "timm_vit.safetensors", capsys)
    assert report["key_layout"] == "timm" and report["architecture"]["pos_grid"] == 2
    assert "position table 2x2 plus a class slot" in report["what"] and report["load_backbone"]["loads"]
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "linear.pth")
    report = _inspect(tmp_path / "linear.pth", capsys)
    assert report["what"].endswith("not a ViT backbone (no patch_embed, pos_embed, blocks)")
    assert report["load_backbone"]["loads"] is False and "not a ViT state dict" in report["load_backbone"]["error"]


def test_demo_prints_j_and_f_in_percent_with_one_decimal_as_eval_does(tmp_path, monkeypatch, capsys):
    import tcore.demo

    scores = {"JF": [0.9391, 0.9], "J": [0.95, 0.91], "F": [0.93, 0.89]}
    copy = {"JF": [0.41, 0.4], "J": [0.42, 0.4], "F": [0.4, 0.4]}
    result = tcore.demo.DemoResult(np.zeros((2, 4, 4), np.uint8), scores, copy, tmp_path / "o.gif", tmp_path)
    monkeypatch.setattr(tcore.demo, "run_demo", lambda **kwargs: result)
    assert main(["demo", "-o", str(tmp_path), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["(percent)", "J&F", "J", "F"]
    assert lines[1].split()[-3:] == ["92.0", "93.0", "91.0"] and lines[2].split()[-3:] == ["40.5", "41.0", "40.0"]
