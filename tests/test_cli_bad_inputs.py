"""The command line's answer to a user's mistake: exit code 1, one `tcore: error:` line naming the
offending path or value, no traceback, and nothing written outside the output folder.

Each case builds its inputs in a fresh folder, runs `tcore.cli.main` in this process (fast: most
cases fail before a model is loaded; the others load a tiny random one) and compares every file
outside the output folder before and after. `--debug` shows the traceback (two subprocess runs).
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from helpers import bomb_png
from PIL import Image, ImageFilter

from tcore.locks import LOCK_NAME, FolderLock
from tcore.cli import main
from tcore.io import DAVIS_PALETTE

_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def _frames(folder: Path, size=(48, 64), n: int = 3, mode: str = "RGB") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for t in range(n):
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        if mode == "F":
            Image.fromarray(rgb[..., 0].astype(np.float32) / 255).save(folder / f"{t:05d}.tif")
        else:
            Image.fromarray(rgb).save(folder / f"{t:05d}.png")
    return folder


def _mask(path: Path, size=(48, 64)) -> Path:
    ids = np.zeros(size, np.uint8)
    ids[size[0] // 4:size[0] // 2, size[1] // 4:size[1] // 2] = 1
    image = Image.fromarray(ids)
    image.putpalette(DAVIS_PALETTE.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _soft_rgb_mask(path: Path) -> Path:
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[12:36, 16:48] = (255, 0, 0)
    Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(3)).save(path)
    return path


def _two_masks_for_frame_0(folder: Path) -> Path:
    _mask(folder / "00000.png")
    _mask(folder / "00000.PNG")
    return folder


def _with_a_gif(folder: Path) -> Path:
    _frames(folder)
    Image.new("RGB", (64, 48)).save(folder / "00003.gif")
    return folder


def _davis(root: Path) -> Path:
    """A one-sequence DAVIS-2017 layout."""
    _frames(root / "JPEGImages" / "480p" / "blob")
    for t in range(3):
        _mask(root / "Annotations" / "480p" / "blob" / f"{t:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("blob\n")
    return root


def _file(path: Path, text: str = "not a folder\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _png(path: Path) -> Path:
    Image.new("RGB", (4, 4)).save(path, format="PNG")
    return path


@dataclass(frozen=True)
class Case:
    """A mistake: `build(tmp, model)` makes the inputs and returns (argv, offending text, output folder)."""

    name: str
    build: Callable[[Path, Path], tuple[list[str], str, Path]]
    marks: tuple = ()


def _propagate(tmp: Path, *extra: str, out: Path | None = None, video: Path | None = None,
               mask: Path | None = None) -> list[str]:
    video = video or _frames(tmp / "frames")
    mask = mask or _mask(tmp / "first.png")
    return ["propagate", str(video), str(mask), "-o", str(out or tmp / "out"), "--quiet", *extra]


def _read_only(tmp: Path) -> Path:
    folder = tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


CASES = [
    Case("propagate: missing video", lambda t, m: (
        ["propagate", str(t / "nope"), str(_mask(t / "m.png")), "-o", str(t / "out")], str(t / "nope"), t / "out")),
    Case("propagate: missing mask", lambda t, m: (
        ["propagate", str(_frames(t / "f")), str(t / "nope.png"), "-o", str(t / "out")], str(t / "nope.png"),
        t / "out")),
    Case("propagate: -o is a file", lambda t, m: (
        _propagate(t, out=_file(t / "out.txt")), str(t / "out.txt"), t / "out.txt")),
    Case("propagate: -o under a file", lambda t, m: (
        _propagate(t, out=_file(t / "file") / "sub"), str(t / "file"), t / "file" / "sub")),
    Case("propagate: -o is the frames folder", lambda t, m: (
        _propagate(t, out=t / "frames"), str(t / "frames"), t / "none")),
    Case("propagate: -o is the masks folder", lambda t, m: (
        _propagate(t, out=t / "masks", mask=_mask(t / "masks" / "00000.png").parent), str(t / "masks"), t / "none")),
    Case("propagate: --overlay with a text suffix", lambda t, m: (
        _propagate(t, "--overlay", str(t / "overlay.txt")), str(t / "overlay.txt"), t / "out")),
    Case("propagate: --overlay under a file", lambda t, m: (
        _propagate(t, "--overlay", str(_file(t / "file") / "o.gif")), str(t / "file"), t / "out")),
    Case("propagate: --device gpu", lambda t, m: (_propagate(t, "--device", "gpu"), "--device='gpu'", t / "out")),
    Case("propagate: --device cuda without CUDA", lambda t, m: (
        _propagate(t, "--device", "cuda"), "--device='cuda'", t / "out"), marks=(_NO_CUDA,)),
    Case("propagate: --model folder without config.json", lambda t, m: (
        _propagate(t, "--model", str(_png(t / "x.png").parent)), f"model={str(t)!r}: a folder without config.json",
        t / "out")),
    Case("propagate: --model is an image", lambda t, m: (
        _propagate(t, "--model", str(_png(t / "x.png"))), f"{t / 'x.png'}: a PNG image, not a checkpoint", t / "out")),
    Case("propagate: --model is a text file", lambda t, m: (
        _propagate(t, "--model", str(_file(t / "m.pth", "lr: 0.1\n"))), f"{t / 'm.pth'}: a text file", t / "out")),
    Case("propagate: anti-aliased RGB mask", lambda t, m: (
        _propagate(t, "--model", str(m), mask=_soft_rgb_mask(t / "soft.png")), str(t / "soft.png"), t / "out")),
    Case("propagate: mask of another size", lambda t, m: (
        _propagate(t, "--model", str(m), mask=_mask(t / "small.png", (24, 32))), f"first_mask {str(t / 'small.png')!r}: size 32x24",
        t / "out")),
    Case("propagate: 32-bit float frames", lambda t, m: (
        _propagate(t, "--model", str(m), "--device", "cpu", video=_frames(t / "float", mode="F")),
        str(t / "float" / "00000.tif"), t / "out")),
    Case("propagate: extreme aspect ratio", lambda t, m: (
        _propagate(t, "--model", str(m), video=_frames(t / "thin", (16, 2000)), mask=_mask(t / "thin.png", (16, 2000))),
        "--size 176 22896", t / "out")),
    Case("propagate: a decompression-bomb frame", lambda t, m: (
        _propagate(t, video=bomb_png(t / "bomb" / "00000.png").parent),
        f"frame 0 ({t / 'bomb' / '00000.png'}) is refused: Image size (900000000 pixels)", t / "out")),
    Case("propagate: a decompression-bomb mask", lambda t, m: (
        _propagate(t, mask=bomb_png(t / "bomb.png")), f"mask '{t / 'bomb.png'}' is refused", t / "out")),
    Case("propagate: two masks for one frame", lambda t, m: (
        _propagate(t, "--model", str(m), mask=_two_masks_for_frame_0(t / "masks")),
        "two masks for frame 0 ('00000'): 00000.PNG and 00000.png", t / "out")),
    Case("propagate: a frame folder with a GIF in it", lambda t, m: (
        _propagate(t, "--model", str(m), video=_with_a_gif(t / "frames")), "(00003.gif)", t / "out")),
    Case("propagate: --size too small for the top-k", lambda t, m: (
        _propagate(t, "--model", str(m), "--size", "16", "16"), "(command line: --size 48 48)", t / "out")),
    Case("features: --point outside the frame", lambda t, m: (
        ["features", str(_frames(t / "f")), "-o", str(t / "p.gif"), "--point", "100", "10", "--model", str(m)],
        "point: (x, y) = (100, 10) lies outside the 64x48 frame", t / "none")),
    Case("eval: -o is a file", lambda t, m: (
        ["eval", "davis", "--root", str(_davis(t / "davis")), "-o", str(_file(t / "res"))], str(t / "res"), t / "res")),
    Case("eval: -o inside the dataset", lambda t, m: (
        ["eval", "davis", "--root", str(_davis(t / "davis")), "-o", str(t / "davis" / "res"), "--model", str(m)],
        str(t / "davis" / "res"), t / "davis" / "res")),
    Case("eval: --device gpu", lambda t, m: (
        ["eval", "davis", "--root", str(_davis(t / "davis")), "-o", str(t / "res"), "--device", "gpu"],
        "--device='gpu'", t / "res")),
    Case("eval: missing --root", lambda t, m: (
        ["eval", "davis", "--root", str(t / "DAVIS"), "-o", str(t / "res")], str(t / "DAVIS"), t / "res")),
    Case("convert: checkpoint is an image", lambda t, m: (
        ["convert", str(_png(t / "w.pth")), "-o", str(t / "conv")], f"{t / 'w.pth'}: a PNG image", t / "conv")),
    Case("convert: -o is a file", lambda t, m: (
        ["convert", str(_png(t / "w.pth")), "-o", str(_file(t / "conv"))], str(t / "conv"), t / "conv")),
    Case("inspect: a text file", lambda t, m: (
        ["inspect", str(_file(t / "notes.txt"))], f"{t / 'notes.txt'}: a text file", t / "none")),
    Case("features: -o with a text suffix", lambda t, m: (
        ["features", str(_frames(t / "f")), "-o", str(t / "pca.txt")], str(t / "pca.txt"), t / "none")),
    Case("demo: --device gpu", lambda t, m: (
        ["demo", "-o", str(t / "demo"), "--device", "gpu"], "--device='gpu'", t / "demo")),
]


def _listing(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under root but `skip`'s subtree, with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p != skip and skip not in p.parents}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_a_mistake_is_one_line_naming_it_and_writes_nothing_else(case, tiny_model, tmp_path, monkeypatch, capsys):
    work, cwd = tmp_path / "work", tmp_path / "cwd"
    work.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv, offending, out = case.build(work, tiny_model)
    out_existed = out.exists()
    before = _listing(work, out)
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tcore: error:")]
    assert code == 1, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert offending in errors[0], errors[0]
    assert _listing(work, out) == before and list(cwd.iterdir()) == []
    assert out.exists() == out_existed  # a failed run leaves no output folder behind


def test_a_read_only_output_folder_is_named_before_any_work(tmp_path, monkeypatch, capsys):
    folder = _read_only(tmp_path)
    if os.access(folder, os.W_OK):  # root ignores permissions: make access() say what a user would see
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == folder else real(p, mode, **kw))
    argv = _propagate(tmp_path, "--model", str(tmp_path / "never-loaded"), out=folder / "masks")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tcore: error: -o '{folder / 'masks'}': '{folder}', where it would be made, is not "
                          "writable (permission denied)")
    assert list(folder.iterdir()) == []


def test_a_results_folder_in_use_names_the_other_run_and_its_lock(tiny_model, tmp_path, capsys):
    root = _davis(tmp_path / "davis")
    with FolderLock(tmp_path / "res" / "davis", "evaluation"):
        before = _listing(tmp_path, tmp_path / "none")
        code = main(["eval", "davis", "--root", str(root), "-o", str(tmp_path / "res"), "--model", str(tiny_model)])
        assert _listing(tmp_path, tmp_path / "none") == before
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"tcore: error: out_dir: {tmp_path / 'res' / 'davis'} is in use by another evaluation run: "
                          f"pid {os.getpid()} on host ")
    assert str(tmp_path / "res" / "davis" / LOCK_NAME) in err


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tcore", *argv], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_debug_shows_the_traceback_and_its_absence_hints_at_it(tmp_path):
    """Both runs as the terminal shows them; the mistake (a missing video) is found before torch is imported."""
    video = tmp_path / "no_frames"
    argv = ["propagate", str(video), str(_mask(tmp_path / "m.png")), "-o", str(tmp_path / "o")]
    plain, debug = _cli(*argv), _cli("--debug", *argv)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.splitlines() == [f"tcore: error: video {video}: no such file or folder",
                                         "(run with --debug for the traceback)"]
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert f"MissingFileError: video {video}: no such file or folder" in debug.stderr


def test_out_of_memory_is_one_line_with_the_fix_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    import tcore.propagation

    def fail(message):
        def iter_masks(*args, **kwargs):
            raise RuntimeError(message)
        return iter_masks

    argv = _propagate(tmp_path)
    monkeypatch.setattr(tcore.propagation, "iter_masks", fail("[enforce fail at alloc_cpu.cpp:118] data. "
                                                              "DefaultCPUAllocator: can't allocate memory: you tried "
                                                              "to allocate 12884901888 bytes."))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("tcore: error: out of memory ([enforce fail") and "smaller --size or --batch-size" in err
    monkeypatch.setattr(tcore.propagation, "iter_masks", fail("an internal invariant broke"))
    with pytest.raises(RuntimeError, match="an internal invariant broke"):  # not the user's mistake: traceback
        main(argv)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("error", [ValueError, TypeError, OSError, FileNotFoundError, ImportError, KeyError])
def test_a_bug_keeps_its_traceback_whatever_built_in_error_it_raises(error, tmp_path, monkeypatch):
    import tcore.propagation

    def broken(*args, **kwargs):
        raise error("an internal invariant broke")

    monkeypatch.setattr(tcore.propagation, "iter_masks", broken)
    with pytest.raises(error, match="an internal invariant broke"):  # not the user's mistake: no one-line verdict
        main(_propagate(tmp_path))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["propagate", "eval"])
def test_a_busy_output_folder_is_refused_before_the_model_loads(command, tmp_path, monkeypatch, capsys):
    import tcore.models

    def load_backbone(*args, **kwargs):
        pytest.fail("the model was loaded before the output folder was claimed")

    monkeypatch.setattr(tcore.models, "load_backbone", load_backbone)
    if command == "propagate":
        argv, busy = _propagate(tmp_path), tmp_path / "out"
    else:
        argv, busy = ["eval", "davis", "--root", str(_davis(tmp_path / "davis")), "-o", str(tmp_path / "res")], \
            tmp_path / "res" / "davis"
    with FolderLock(busy, "test"):
        assert main(argv) == 1
    assert f"{busy} is in use by another test run: pid {os.getpid()}" in capsys.readouterr().err


def test_a_full_disk_stops_the_run_at_once_naming_the_file(tiny_model, tmp_path, monkeypatch, capsys):
    from tcore.io.video import _FolderFrames

    decoded = []
    decode = _FolderFrames._frame
    monkeypatch.setattr(_FolderFrames, "_frame", lambda self, i: decoded.append(i) or decode(self, i))

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    argv = _propagate(tmp_path, "--model", str(tiny_model), "--size", "48", "64", "--batch-size", "1",
                      video=_frames(tmp_path / "frames", n=40))
    monkeypatch.setattr(Image.Image, "save", full)  # after the inputs are made: every mask write fails
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tcore: error: could not write '{tmp_path / 'out' / '.partial' / '00000.png'}': No space "
                          "left on device (errno 28); free some space there")
    assert len(decoded) < 20, decoded  # stopped as the write failed (prefetch reads a few ahead), not at the end
    assert "tcore-prefetch" not in [t.name for t in threading.enumerate()]  # and its decoding thread is gone
    assert not (tmp_path / "out").exists()
