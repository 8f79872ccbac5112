"""README.md's commands run as written.

Every fenced `bash` or `python` block in README.md carries a marker on the line above it:
`<!-- readme-test: run -->` (executed here), `<!-- readme-test: run slow -->` (executed, marked slow)
or `<!-- readme-test: skip: <why> -->`. A block without a marker fails the test, so a new block is
never left untested by accident.

The run blocks are executed in a copy of this clone's tracked files (a fresh clone), in README order,
each in a fresh process (as a reader would paste it), with:
- the Hub's released files replaced by random weights of the right architecture in a private Hugging
  Face cache (HF_HUB_OFFLINE=1): the commands run as written, only the numbers differ;
- the inputs the README names (`video.mp4`, `first.png`, `saliency.png`, `frames/`, `00000.png`,
  `annotations/`, `vits16_400ep_K400.pth`, `my_videos/`) made from the demo clip at a small size.
`pip install`, `git clone` and `pytest` commands are not rerun: CI has just installed the package
exactly as the README says and is running the tests.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from PIL import Image, ImageFilter

MARKER = re.compile(r"<!--\s*readme-test:\s*(run slow|run|skip:[^>]*?)\s*-->")
NOT_RERUN = ("pip install", "git clone", "cd T-CORE", "pytest")  # CI has just done these
RELEASES = {"ckpt/vits16_400ep_K400.pth": "tcore_vits16", "ckpt/vits16_100ep_INET.pth": "tcore_vits16",
            "ckpt/vitb16_200ep_K400.pth": "tcore_vitb16"}


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # 1-based line of the opening fence
    marker: str | None  # "run", "run slow", "skip: ...", or None

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.language}"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced bash/python block of `text` with the marker on the line above its fence."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w+)\s*$", lines[i])
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in ("bash", "python"):
            marker = MARKER.search(lines[i - 1]) if i else None
            blocks.append(Block(fence.group(1), "\n".join(lines[i + 1:end]), i + 1,
                                marker.group(1) if marker else None))
        i = end + 1
    return blocks


BLOCKS = readme_blocks((REPO / "README.md").read_text())
RUN = [b for b in BLOCKS if b.marker in ("run", "run slow")]


def test_every_block_says_whether_it_runs():
    unmarked = [f"README.md:{b.line} ({b.language})" for b in BLOCKS if b.marker is None]
    assert not unmarked, f"add <!-- readme-test: run --> or <!-- readme-test: skip: why --> above: {unmarked}"
    assert all(b.marker.split(":", 1)[1].strip() for b in BLOCKS if b.marker.startswith("skip")), "say why"
    assert len(RUN) >= 10  # the README's commands are mostly run, not skipped


def test_the_readme_installs_and_tests_as_ci_does():
    """The two commands of the install section are the ones .ci/run runs (install with the test extra, pytest -rs)."""
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install ".[test]"' in ci and "\npytest -rs" in ci
    assert any('pip install ".[test]" && pytest -rs' in b.code for b in RUN)
    assert any('pip install ".[video]" && tcore demo' in b.code for b in RUN)


def shell_script(code: str) -> str:
    """The block without the commands CI has already run (`pip install ...`, `git clone`, `pytest`)."""
    kept = []
    for line in code.splitlines():
        command, _, comment = line.partition("  #")
        parts = [p.strip() for p in command.split("&&")]
        parts = [p for p in parts if p and not p.startswith(NOT_RERUN)]
        if parts or not command.strip():
            kept.append(" && ".join(parts))
    return "\n".join(kept)


def test_commands_ci_has_run_are_not_rerun():
    script = shell_script('pip install ".[video]" && tcore demo     # the demo\npip install ".[test]" && pytest -rs\n'
                          'tcore propagate a b -o c   # masks\n')
    assert script.splitlines() == ["tcore demo", "tcore propagate a b -o c"]


# ------------------------------------------------------------------------------ the sandbox

def _official_file(arch: str, path: Path) -> None:
    """A random-weight checkpoint of `arch` in the released files' layout ({"teacher": {"backbone.*"}})."""
    import torch

    import tcore
    from tcore.checkpoint import to_official_state_dict

    torch.manual_seed(0)
    backbone = getattr(tcore, arch)(pretrained=False)
    teacher = {f"backbone.{k}": v for k, v in to_official_state_dict(backbone.state_dict()).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"teacher": teacher}, path)


def _hub_cache(root: Path) -> Path:
    """A Hugging Face cache holding yafeng19/T-CORE's released files, random weights of the right size."""
    repo, commit = root / "hub" / "models--yafeng19--T-CORE", "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    blobs: dict[str, Path] = {}
    for name, arch in RELEASES.items():
        if arch not in blobs:
            blobs[arch] = repo / "blobs" / arch
            _official_file(arch, blobs[arch])
        target = repo / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(blobs[arch])
    return root


def _write_video(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _inputs(folder: Path) -> None:
    """The files the README's commands name, from the demo clip (5 frames, 120x160)."""
    import tcore
    from tcore.demo import make_demo_clip

    frames, masks = make_demo_clip(n_frames=5, size=(120, 160))
    (folder / "frames").mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / "frames" / f"{t:05d}.jpg", quality=95)
    tcore.write_masks(folder, masks[:1], names=["00000"])                    # 00000.png
    tcore.write_masks(folder / "annotations", masks[[0, 4]], names=["00000", "00004"])
    shutil.copy(folder / "00000.png", folder / "first.png")
    soft = Image.fromarray(((masks[0] > 0) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    soft.save(folder / "saliency.png")
    _write_video(folder / "video.mp4", frames)
    (folder / "my_videos").mkdir()
    for seed in range(3):  # training: frame folders of 20 frames need videos of 20 frames at least
        clip, _ = make_demo_clip(n_frames=24, size=(64, 64), seed=seed)
        _write_video(folder / "my_videos" / f"clip{seed}.mp4", clip)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(a copy of the clone's tracked files with the README's inputs, the environment to run in)."""
    root = tmp_path_factory.mktemp("readme")
    clone = root / "T-CORE"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    _inputs(clone)
    hf_home = _hub_cache(root / "hf")
    os.symlink(hf_home / "hub" / "models--yafeng19--T-CORE" / "blobs" / "tcore_vits16",
               clone / "vits16_400ep_K400.pth")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)  # the installed tcore, as a reader's; training/ resolves from the clone
    return clone, env


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.marker == "run slow"
                                                else []) for b in RUN])
def test_readme_block_runs_as_written(block: Block, sandbox):
    clone, env = sandbox
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", shell_script(block.code)]
    done = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (f"README.md:{block.line} failed ({shlex.join(command[:2])} ...)\n"
                                  f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-5000:]}")
