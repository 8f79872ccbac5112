"""The results folder: manifest (what produced the outputs), resume safety, atomic files, the table.

A benchmark's results live in ``<out_dir>/<benchmark>/``: ``manifest.json``, one output per video
(``<seq>/<frame>.png``, ``<action>/<clip>.npy``, ``videos<N>/<frame>.png``), the CSV files and
``summary.json``. The manifest records the model (name or path, file sha256, registry entry), a
digest of the loaded weights, the protocol (preset, size rule, propagation settings, precision)
and the tcore version. A folder whose manifest differs is never mixed with new outputs: that is an
error unless `overwrite` asks to delete it. Summaries and CSVs are rewritten by every run (they are
never reused, unlike the official script's ``global_results-val.csv``).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch

from ..locks import is_lock_file
from .._version import __version__
from ..errors import InvalidInputError
from ..files import sha256sum, write_text_atomic, writing  # results are written through tcore's one atomic writer

__all__ = [
    "COLUMNS",
    "MANIFEST_NAME",
    "ManifestMismatchError",
    "SUMMARY_NAME",
    "build_manifest",
    "describe_model",
    "format_table",
    "model_label",
    "paper_scores",
    "prepare_results_folder",
    "weights_digest",
    "write_json_atomic",
    "write_text_atomic",
]

MANIFEST_NAME = "manifest.json"
SUMMARY_NAME = "summary.json"
PARTIAL_DIR = ".partial"  # per-video outputs being written; renamed into place when complete
_MANIFEST_FORMAT = 1
# Fields that must match for outputs to be reused; the rest (paths, dates) is information only.
_KEY_FIELDS = ("format", "benchmark", "weights_sha256", "backbone", "protocol", "tcore_version")

_JF = ("J&F-Mean", "J-Mean", "F-Mean")
COLUMNS = {"davis": _JF, "jhmdb": ("PCK@0.1", "PCK@0.2"), "vip": ("mIoU",), "ytvos": _JF, "mose": _JF}
_TITLES = {"davis": "DAVIS-2017 val", "jhmdb": "JHMDB", "vip": "VIP", "ytvos": "YouTube-VOS", "mose": "MOSE"}
_PAPER_BENCHMARKS = ("davis", "jhmdb", "vip")  # the paper reports no YouTube-VOS or MOSE number
_PAPER_FIELDS = {"J&F-Mean": "davis_jf", "J-Mean": "davis_j", "F-Mean": "davis_f",
                 "PCK@0.1": "jhmdb_pck01", "PCK@0.2": "jhmdb_pck02", "mIoU": "vip_miou"}


class ManifestMismatchError(InvalidInputError):
    """The results folder holds outputs made by another model, protocol or tcore version."""


# ------------------------------------------------------------------------------- the model

def describe_model(model: Any) -> dict[str, Any]:
    """What `model=` named, for the manifest: a release, a file, a folder, a Hub repo or a module.

    Args:
        model: the `model=` argument given to `evaluate` (already loaded successfully).

    Returns:
        A JSON-able dict with "kind" and, by kind: "name" / "repo_id" / "filename" / "revision" /
        "registry_sha256" / "sha256" (release, from the registry and the cached file), "path" and
        "sha256" (file), "path" and "files" {name: sha256} (folder), "repo_id" (Hub), "name" (timm),
        "class" (module). A file whose sha256 equals a pinned registry entry also gets "release".
    """
    from ..hub import is_repo_id
    from ..weights import default_tag, download, get_pretrained, list_tags, pinned_releases

    if model is None:
        model = f"tcore_vits16.{default_tag('tcore_vits16')}"
    if isinstance(model, torch.nn.Module):
        return {"kind": "module", "class": type(model).__name__}
    text = str(model)
    if list_tags(text.partition(".")[0]):
        entry = get_pretrained(text)
        return {"kind": "release", "name": entry.name, "repo_id": entry.repo_id, "filename": entry.filename,
                "revision": entry.revision, "registry_sha256": entry.sha256,
                "sha256": sha256sum(download(entry.name))}
    path = Path(text).expanduser()
    if path.is_file():
        info: dict[str, Any] = {"kind": "file", "path": str(path.resolve()), "sha256": sha256sum(path)}
        pinned = pinned_releases()
        if info["sha256"] in pinned:
            info["release"] = pinned[info["sha256"]]
        return info
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return {"kind": "folder", "path": str(path.resolve()), "files": {p.name: sha256sum(p) for p in files}}
    if is_repo_id(text):
        return {"kind": "hub", "repo_id": text}
    return {"kind": "timm", "name": text}


def model_label(info: Mapping[str, Any]) -> str:
    """A short name for the model in tables."""
    kind = info["kind"]
    if kind == "release":
        return info["name"]
    if kind in ("file", "folder"):
        return Path(info["path"]).name
    return info.get("repo_id") or info.get("name") or info.get("class", "model")


def weights_digest(backbone: torch.nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and bytes, in name order).

    Two runs with the same weights get the same digest whatever file or path they came from.
    """
    digest = hashlib.sha256()
    state = backbone.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def paper_scores(info: Mapping[str, Any], benchmark: str) -> dict[str, Any] | None:
    """The paper's numbers (percent) for a released model, else None.

    Returns:
        {"name": "tcore_vits16.k400", "scores": {column: value}} for `benchmark`'s columns.
    """
    from ..weights import get_pretrained

    name = info.get("name") if info["kind"] == "release" else info.get("release")
    if name is None or benchmark not in _PAPER_BENCHMARKS:
        return None
    scores = get_pretrained(name).scores
    return {"name": name, "scores": {c: getattr(scores, _PAPER_FIELDS[c]) for c in COLUMNS[benchmark]}}


# ------------------------------------------------------------------------------ the manifest


def build_manifest(benchmark: str, model_info: Mapping[str, Any], backbone: torch.nn.Module,
                   digest: str, protocol: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest of a run (JSON-able).

    Args:
        benchmark: "davis", "jhmdb" or "vip".
        model_info: `describe_model(model)`.
        backbone: the loaded backbone (its architecture and position-embedding resize are recorded).
        digest: `weights_digest(backbone)`.
        protocol: preset, size rule, size override, propagation settings and precision.
    """
    arch = dict(getattr(backbone, "arch", {}) or {})
    return {
        "format": _MANIFEST_FORMAT,
        "benchmark": benchmark,
        "model": dict(model_info),
        "weights_sha256": digest,
        "backbone": _jsonable({"class": type(backbone).__name__, "arch": arch,
                               "pos_interp": getattr(backbone, "pos_interp", None),
                               "patch_size": int(backbone.patch_size)}),
        "protocol": _jsonable(dict(protocol)),
        "tcore_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences of the key fields, e.g. "protocol.size_override: None -> [64, 64]"."""
    out = []
    for key in _KEY_FIELDS:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def prepare_results_folder(folder: Path, manifest: Mapping[str, Any], overwrite: bool) -> None:
    """Make `folder` ready for this run's outputs, or refuse to mix them with another run's.

    * new or empty folder: create it and write the manifest;
    * a folder with the same manifest (key fields): keep it, finished videos will be skipped;
    * a folder with another manifest: ManifestMismatchError, or with `overwrite` delete it first;
    * a non-empty folder without a manifest: never touched (it is not a tcore results folder).

    Leftovers of an interrupted run (incomplete per-video outputs) are removed. The lock file of
    the run that holds the folder (`tcore.locks`) counts as nothing and is never deleted.

    Raises:
        ManifestMismatchError: another run's outputs and not `overwrite`.
        InvalidInputError: a non-empty folder that is not a tcore results folder, or a path that is a file.
        FileAccessError: the folder cannot be made (a full disk, no permission).
    """
    manifest_path = folder / MANIFEST_NAME
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"out_dir: {folder} is a file; give a folder for the results")
    if folder.is_dir() and _contents(folder):
        if not manifest_path.is_file():
            raise InvalidInputError(f"out_dir: {folder} is not empty and holds no {MANIFEST_NAME}, so it is not a "
                                    f"tcore results folder; pick a new or empty folder with -o (out_dir=)")
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as err:
            old = {"unreadable": str(err)}
        changes = _differences(old, manifest)
        if changes and not overwrite:
            raise ManifestMismatchError(
                f"out_dir: {folder} holds outputs of another run ({'; '.join(changes)}); they must not be mixed "
                f"with this run's. Pick another results folder with -o (out_dir=), or pass --overwrite "
                f"(overwrite=True) to delete them and start again")
        if overwrite:
            _empty(folder)
        else:
            shutil.rmtree(folder / PARTIAL_DIR, ignore_errors=True)
            return
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(manifest_path, manifest)


def _contents(folder: Path) -> list[Path]:
    """What a results folder holds, besides the files of the lock that guards it."""
    return [p for p in folder.iterdir() if not is_lock_file(p.name)]


def _empty(folder: Path) -> None:
    """Delete everything in `folder` except the lock (the run that holds it goes on)."""
    for path in _contents(folder):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


# ------------------------------------------------------------------------------ JSON files

def _jsonable(value: Any) -> Any:
    """Plain JSON values: tuples -> lists, numpy scalars/arrays -> Python, NaN/inf -> None."""
    import numpy as np

    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON (NaN as null) atomically."""
    write_text_atomic(path, json.dumps(_jsonable(value), indent=2) + "\n")


# ------------------------------------------------------------------------------------ table


def format_table(summary: Mapping[str, Any]) -> str:
    """The paper's table for one benchmark: our numbers and, for a released model, the paper's.

    Args:
        summary: the dict `evaluate` returns.

    Returns:
        Text lines (percent, one decimal). A run of DAVIS, JHMDB or VIP that is not the paper's
        protocol (`summary["paper_protocol"]` False: another split, size or precision) says so on
        the line under the header; the notes say why.
    """
    benchmark = summary["benchmark"]
    columns = COLUMNS[benchmark]
    sizes = summary.get("working_sizes") or []
    size_text = ", working size " + ", ".join(f"{h}x{w}" for h, w in sizes[:3]) + ("..." if len(sizes) > 3 else "")
    n = summary["n_videos"]
    unit = {"davis": "sequence", "jhmdb": "clip"}.get(benchmark, "video")
    counts = f"{n} {unit}{'s' * (n != 1)}"
    if "n_objects" in summary["details"]:
        objects = summary["details"]["n_objects"]
        counts += f", {objects} object{'s' * (objects != 1)}"
    header = f"{_TITLES[benchmark]}: {counts} (preset {summary['protocol']['preset']}{size_text})"
    rows = [(f"ours: {model_label(summary['model'])}", summary["scores"])]
    if summary.get("paper"):
        rows.append((f"paper: {summary['paper']['name']}", summary["paper"]["scores"]))
    width = max(len(label) for label, _ in rows) + 2
    lines = [header, " " * width + "".join(f"{c:>10}" for c in columns)]
    if benchmark in _PAPER_BENCHMARKS and not summary.get("paper_protocol", True):
        lines.insert(1, "NOT the paper's protocol (see the notes): these numbers do not compare with the paper's")
    for label, scores in rows:
        lines.append(f"{label:<{width}}" + "".join(_cell(scores.get(c)) for c in columns))
    lines += [f"note: {note}" for note in summary.get("notes", [])]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:>10.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else f"{'-':>10}"
