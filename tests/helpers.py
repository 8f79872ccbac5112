"""Helpers for tests: where the shared real data is, and the golden inputs.

Real data lives in `../shared` (override with TCORE_SHARED). `shared_path(...)` skips when the
file is absent, or fails when TCORE_REQUIRE_SHARED=1 (CI), so golden and real-data tests can
never pass by skipping.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("TCORE_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under the shared data folder; skip (or fail in CI) when it is missing."""
    path = shared_root().joinpath(*parts)
    if not path.exists():
        reason = f"shared data missing: {path} (set TCORE_SHARED to the shared folder)"
        if os.environ.get("TCORE_REQUIRE_SHARED") == "1":
            pytest.fail(reason + " and TCORE_REQUIRE_SHARED=1")
        pytest.skip(reason)
    return path


def golden_inputs():
    """The module `../shared/golden/inputs.py` (deterministic golden inputs)."""
    import importlib.util

    path = shared_path("golden", "inputs.py")
    spec = importlib.util.spec_from_file_location("tcore_golden_inputs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def golden_engine_cases():
    """The official engine's golden outputs: (name, features (T,h,w,D), first labels (C,h,w), params,
    expected (T,C,h,w)) per case; skips (or fails in CI) without the shared data."""
    import json

    import torch
    from safetensors.torch import load_file

    meta = json.loads(shared_path("golden", "propagation_official.json").read_text())
    outputs = load_file(str(shared_path("golden", "propagation_official.safetensors")))
    inputs = golden_inputs()
    for name, case in meta["cases"].items():
        feats = torch.from_numpy(inputs.drifting_features(case["T"], case["h"], case["w"], case["D"]))
        labels = torch.from_numpy(inputs.soft_labels(case["C"], case["h"], case["w"]))
        params = {key: case[key] for key in ("topk", "temperature", "radius", "n_context")}
        yield name, feats, labels, params, outputs[name]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server or a torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A tiny PNG whose header declares `side` x `side` grey pixels (a decompression bomb: PIL refuses
    to open one above twice PIL.Image.MAX_IMAGE_PIXELS; its pixel data is never there)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3 and on (state, ppid, ...) of /proc/<pid>/stat (Linux); None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def process_alive(pid: int) -> bool:
    """Running (a zombie left unreaped counts as stopped for good). Linux."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def process_parent(pid: int) -> int:
    """The parent pid of a running process. Linux."""
    return int(_proc_stat(pid)[1])


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, ...). Linux."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        stat = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None:
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found
