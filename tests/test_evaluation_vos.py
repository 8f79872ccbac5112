"""YouTube-VOS and MOSE (`tcore eval ytvos|mose`): readers of the official layouts, the submission
zips checked file by file, resuming, and J&F when ground truth covers every frame.

Synthetic trees in the official layouts, a tiny random backbone; objects that start at different
frames, as YouTube-VOS videos have them.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tcore
from tcore.cli import main
from tcore.demo import make_demo_clip
from tcore.evaluation import DatasetError, evaluate, read_mose, read_ytvos
from tcore.io import DAVIS_PALETTE

SMALL = (48, 64)
N_DENSE = 11  # all-frames video: frames 00000..00010; the sparse split keeps every 5th


def _png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8))
    image.putpalette(DAVIS_PALETTE.tobytes())
    image.save(path)


def _jpg(path: Path, frame: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path, quality=95)


def _write_ytvos(root: Path, *, split: str = "valid", dense: bool = True) -> Path:
    """Two videos: in "late", object 2 first appears at frame 00005 (annotated there, alone)."""
    meta = {"videos": {}}
    for name, seed, starts in (("early", 0, {1: 0, 2: 0}), ("late", 1, {1: 0, 2: 5})):
        frames, masks = make_demo_clip(N_DENSE, SMALL, seed=seed)
        objects = {}
        for t in range(N_DENSE):
            if dense:
                _jpg(root / f"{split}_all_frames" / "JPEGImages" / name / f"{t:05d}.jpg", frames[t])
            if t % 5:
                continue
            _jpg(root / split / "JPEGImages" / name / f"{t:05d}.jpg", frames[t])
            gt = np.where(np.isin(masks[t], [o for o, s in starts.items() if s <= t]), masks[t], 0)
            if split == "train":
                _png(root / split / "Annotations" / name / f"{t:05d}.png", gt)
            elif t in starts.values():  # valid: masks only where objects first appear, showing those objects
                _png(root / split / "Annotations" / name / f"{t:05d}.png",
                     np.where(np.isin(gt, [o for o, s in starts.items() if s == t]), gt, 0))
            for obj, start in starts.items():
                if t >= start:
                    objects.setdefault(str(obj), {"category": "blob", "frames": []})["frames"].append(f"{t:05d}")
        meta["videos"][name] = {"objects": objects}
    (root / split / "meta.json").write_text(json.dumps(meta))
    return root


def _write_mose(root: Path, *, full_gt: bool = False) -> Path:
    for name, seed in (("m1", 2), ("m2", 3)):
        frames, masks = make_demo_clip(4, SMALL, seed=seed)
        for t in range(4):
            _jpg(root / "valid" / "JPEGImages" / name / f"{t:05d}.jpg", frames[t])
            if t == 0 or full_gt:
                _png(root / "valid" / "Annotations" / name / f"{t:05d}.png", masks[t])
    return root


def _run(benchmark: str, root: Path, model: Path, out: Path, **kwargs) -> dict:
    return evaluate(benchmark, root, model=model, out_dir=out, device="cpu", progress=False, size=SMALL, **kwargs)


# ------------------------------------------------------------------------------------- readers

def test_ytvos_reader_takes_meta_frames_all_frames_and_annotations(tmp_path):
    dataset = read_ytvos(_write_ytvos(tmp_path))
    late = {v.name: v for v in dataset.videos}["late"]
    assert late.keep == ("00000", "00005", "00010")
    assert late.frames == tmp_path / "valid_all_frames" / "JPEGImages" / "late"  # every frame is propagated
    assert sorted(p.name for p in late.labels.iterdir()) == ["00000.png", "00005.png"]
    assert not late.full_gt and dataset.official_split


def test_ytvos_reader_without_all_frames_uses_the_sparse_frames(tmp_path):
    dataset = read_ytvos(_write_ytvos(tmp_path, dense=False))
    assert dataset.videos[0].frames == tmp_path / "valid" / "JPEGImages" / "early"


def test_readers_name_the_layout_they_expected(tmp_path):
    with pytest.raises(DatasetError, match=r"no valid/JPEGImages and valid/Annotations.*youtube-vos"):
        read_ytvos(tmp_path)
    with pytest.raises(DatasetError, match=r"no JPEGImages/ and Annotations/.*MOSE"):
        read_mose(tmp_path)
    with pytest.raises(ValueError, match="split='valid': only ytvos and mose"):
        evaluate("davis", tmp_path, out_dir=tmp_path / "out", split="valid")


# ------------------------------------------------------------------------------- YouTube-VOS

def test_ytvos_writes_the_submission_zip_file_by_file_and_resumes(tmp_path, tiny_model):
    root = _write_ytvos(tmp_path / "ytvos")
    summary = _run("ytvos", root, tiny_model, tmp_path / "out")
    results = tmp_path / "out" / "ytvos"
    with zipfile.ZipFile(results / "submission.zip") as archive:
        names = sorted(archive.namelist())
        expected = sorted(f"Annotations/{v}/{t:05d}.png" for v in ("early", "late") for t in (0, 5, 10))
        assert names == expected
        for name in names:
            with archive.open(name) as f, Image.open(f) as image:
                assert image.mode == "P" and image.size == (SMALL[1], SMALL[0])
                ids = np.asarray(image)
            assert set(np.unique(ids)) <= {0, 1, 2}
            if name == "Annotations/late/00000.png":
                assert not (ids == 2).any()  # object 2 of "late" starts at frame 00005
    assert summary["scores"] == {} and summary["paper"] is None
    assert any("upload" in note for note in summary["notes"]) and any("no number" in n for n in summary["notes"])
    again = _run("ytvos", root, tiny_model, tmp_path / "out")
    assert again["n_resumed"] == 2 and again["n_predicted"] == 0


def test_ytvos_predictions_are_the_front_end_on_all_frames_with_masks_where_objects_appear(tmp_path, tiny_model):
    root = _write_ytvos(tmp_path / "ytvos")
    _run("ytvos", root, tiny_model, tmp_path / "out")
    expected = tcore.propagate_masks(root / "valid_all_frames" / "JPEGImages" / "late",
                                     root / "valid" / "Annotations" / "late", model=tcore.load_backbone(tiny_model),
                                     preset="ytvos", size=SMALL, device="cpu", progress=False)
    for t in (0, 5, 10):
        written = np.asarray(Image.open(tmp_path / "out" / "ytvos" / "Annotations" / "late" / f"{t:05d}.png"))
        np.testing.assert_array_equal(written, expected[t])
    assert not (expected[:5] == 2).any() and (expected[5:] == 2).any()


def test_ytvos_train_split_with_full_ground_truth_is_scored(tmp_path, tiny_model):
    root = _write_ytvos(tmp_path / "ytvos", split="train")
    summary = _run("ytvos", root, tiny_model, tmp_path / "out", split="train")
    scores = summary["scores"]
    assert set(scores) == {"J&F-Mean", "J-Mean", "F-Mean"}
    assert 0 <= scores["J-Mean"] <= 100
    assert scores["J&F-Mean"] == pytest.approx((scores["J-Mean"] + scores["F-Mean"]) / 2)
    per_video = summary["details"]["per_video"]
    assert set(per_video["late"]) == {"1", "2"} and summary["details"]["n_objects"] == 4
    assert (tmp_path / "out" / "ytvos" / "per-object_results.csv").read_text().startswith("Video,Object,J,F,J&F\n")
    assert not summary["official_split"]


def test_eval_ytvos_cli(tmp_path, tiny_model, capsys):
    root = _write_ytvos(tmp_path / "ytvos", dense=False)
    rc = main(["eval", "ytvos", "--root", str(root), "--split", "valid", "--model", str(tiny_model), "-o",
               str(tmp_path / "out"), "--device", "cpu", "--size", *map(str, SMALL), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "YouTube-VOS: 2 videos" in out and (tmp_path / "out" / "ytvos" / "submission.zip").is_file()


# ---------------------------------------------------------------------------------------- MOSE

def test_mose_zip_holds_video_folders_at_the_top_for_every_frame(tmp_path, tiny_model):
    root = _write_mose(tmp_path / "mose")
    summary = _run("mose", root, tiny_model, tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "out" / "mose" / "submission.zip") as archive:
        assert sorted(archive.namelist()) == [f"{v}/{t:05d}.png" for v in ("m1", "m2") for t in range(4)]
    assert summary["scores"] == {}


def test_mose_with_full_ground_truth_is_scored(tmp_path, tiny_model):
    root = _write_mose(tmp_path / "mose", full_gt=True)
    summary = _run("mose", root / "valid", tiny_model, tmp_path / "out")  # --root may also be the split folder
    assert summary["details"]["n_objects"] == 4 and summary["scores"]["J&F-Mean"] > 0
