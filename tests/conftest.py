"""Shared test fixtures (helpers for shared data are in `helpers.py`)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest

if TYPE_CHECKING:
    import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lets tests `from helpers import shared_path`
# `training/` runs from the clone (it is not in the wheel): appended, so that `tcore` still resolves to
# the installed package and never to the source tree.
sys.path.append(str(Path(__file__).resolve().parents[1]))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No test may reach the network: the Hugging Face Hub is offline for every test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_frames(tmp_path_factory) -> Path:
    """Eight synthetic videos as JPEG frame folders (layout "folders", 40x56 pixels, 3 to 30 frames):
    the tiny training config's data. Shared by the whole session: tests only read it."""
    from training.synthetic import make_frame_folders

    root = tmp_path_factory.mktemp("tiny_frames")
    make_frame_folders(root, [20, 7, 12, 3, 30, 9, 15, 24], size=(40, 56), layout="folders")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the in-process training runs of a module: the tiny config's kernels are
    too small to share, and on a busy 2-core machine two OpenMP threads that wait for each other
    cost seconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_backbone():
    """A random tiny T-CoRe ViT (dim 64, depth 2, 2 heads, 4 registers, patch 16)."""
    import torch

    import tcore

    torch.manual_seed(0)
    return tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def tiny():
    """A random tiny T-CoRe ViT (dim 32, depth 1, 2 heads) as a module; tests only read it."""
    import torch

    import tcore

    torch.manual_seed(0)
    return tcore.TCoReBackbone(embed_dim=32, depth=1, num_heads=2)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny T-CoRe ViT (dim 32, depth 1, 2 heads) as a save_pretrained folder: what
    `--model PATH` and `model=` take. Shared by the whole session: tests only read it."""
    import torch

    import tcore

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    tcore.TCoReBackbone(embed_dim=32, depth=1, num_heads=2).save_pretrained(str(folder))
    return folder



def _random_official_checkpoint(constructor: Callable[..., torch.nn.Module], path: Path,
                                dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Seeded random weights (normal, std 0.1) for the architecture `constructor` builds, saved at `path` in
    the official teacher-checkpoint layout, {"teacher": {"backbone.<official name>": ..., "dino_head.*": ...}}
    (a 2048-wide head, as the releases have), in `dtype` (default float32); returns the backbone's state
    dict in tcore's names.

    The model is built on the meta device (names and shapes only): timm's initialisation of a ViT-B
    costs more than writing the whole file."""
    import torch

    from tcore.checkpoint import to_official_state_dict

    with torch.device("meta"):
        shapes = {name: t.shape for name, t in constructor(pretrained=False).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state = {name: (torch.randn(shape, generator=g) * 0.1).to(dtype or torch.float32) for name, shape in shapes.items()}
    teacher = {f"backbone.{k}": v for k, v in to_official_state_dict(state).items()}
    teacher["dino_head.mlp.0.weight"] = torch.randn(2048, state["cls_token"].shape[-1], generator=g)
    teacher["dino_head.last_layer.weight_g"] = torch.ones(16, 1)
    torch.save({"teacher": teacher}, path)
    return state


@pytest.fixture(scope="session")
def vits16_official_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random ViT-S/16 (tcore_vits16's architecture) as `vits16_400ep_K400.pth` in the official teacher
    layout (float32, 88 MB), and its state dict in tcore's names. Shared by the session: tests only read it."""
    import tcore

    path = tmp_path_factory.mktemp("vits16_official") / "vits16_400ep_K400.pth"
    return path, _random_official_checkpoint(tcore.tcore_vits16, path)


@pytest.fixture(scope="session")
def vitb16_official_file(tmp_path_factory) -> Path:
    """A random ViT-B/16 (tcore_vitb16's architecture) as `vitb16_200ep_K400.pth` in the official teacher
    layout, in float16 (172 MB; tcore loads half-precision files as float32). Shared by the session: tests
    only read it (the values, with `torch.load(path, mmap=True)`)."""
    import torch

    import tcore

    path = tmp_path_factory.mktemp("vitb16_official") / "vitb16_200ep_K400.pth"
    _random_official_checkpoint(tcore.tcore_vitb16, path, dtype=torch.float16)
    return path
