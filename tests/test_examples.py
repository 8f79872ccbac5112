"""The scripts in examples/ run as users run them (small inputs, a tiny random backbone): each as
`__main__` with its own command line, in this process (no interpreter start per script)."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tcore
from tcore.demo import make_demo_clip

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny backbone folder, a frame folder, its first mask, and a DAVIS-layout dataset."""
    root = tmp_path_factory.mktemp("examples")
    torch.manual_seed(0)
    tcore.TCoReBackbone(embed_dim=32, depth=1, num_heads=2).save_pretrained(root / "tiny")
    frames, masks = make_demo_clip(n_frames=5, size=(64, 96), seed=2)
    for seq in ("blobs-a", "blobs-b"):
        for sub in ("JPEGImages/480p", "Annotations/480p"):
            (root / "davis" / sub / seq).mkdir(parents=True)
        for t, (frame, mask) in enumerate(zip(frames, masks)):
            Image.fromarray(frame).save(root / "davis" / "JPEGImages/480p" / seq / f"{t:05d}.jpg")
            tcore.io.write_mask(root / "davis" / "Annotations/480p" / seq / f"{t:05d}.png", mask)
    (root / "davis" / "ImageSets" / "2017").mkdir(parents=True)
    (root / "davis" / "ImageSets" / "2017" / "val.txt").write_text("blobs-a\nblobs-b\n")
    return root


@pytest.fixture
def run_example(monkeypatch, capsys, tmp_path):
    """run_example(script, *args) runs examples/script as `python script *args` from tmp_path; its stdout."""
    def run(script: str, *args: str) -> str:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [str(EXAMPLES / script), *args])
        capsys.readouterr()
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")  # an error or a SystemExit fails the test
        return capsys.readouterr().out

    return run


def test_propagate_video_example(workspace, tmp_path, run_example):
    seq = workspace / "davis" / "JPEGImages/480p" / "blobs-a"
    first = workspace / "davis" / "Annotations/480p" / "blobs-a" / "00000.png"
    stdout = run_example("propagate_video.py", str(seq), str(first), str(tmp_path / "out"), "--model",
                         str(workspace / "tiny"), "--size", "64", "96")
    assert "5 masks" in stdout
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())[0] == "00000.png"
    assert (tmp_path / "out" / "overlay.gif").stat().st_size > 0


def test_extract_features_example(workspace, tmp_path, run_example):
    image = workspace / "davis" / "JPEGImages/480p" / "blobs-a" / "00000.jpg"
    stdout = run_example("extract_features.py", str(image), str(tmp_path / "pca.png"), "--model",
                         str(workspace / "tiny"), "--size", "64", "96")
    assert "(4, 6, 32)" in stdout
    assert np.asarray(Image.open(tmp_path / "pca.png")).shape == (64, 192, 3)


def test_evaluate_davis_example(workspace, tmp_path, run_example):
    stdout = run_example("evaluate_davis.py", str(workspace / "davis"), "--model", str(workspace / "tiny"), "--out",
                         str(tmp_path / "results"), "--size", "64", "96")
    assert "J&F-Mean" in stdout
    summary = json.loads((tmp_path / "results" / "davis" / "summary.json").read_text())
    assert summary["protocol"]["preset"] == "davis" and summary["working_sizes"] == [[64, 96]]
