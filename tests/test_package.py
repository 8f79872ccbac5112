"""Packaging and boundaries: the wheel holds `tcore` only, `import tcore` is light, the inference
package never imports training code, and the command line works."""
from __future__ import annotations

import ast
import functools
import json
import os
import subprocess
import tempfile
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from helpers import REPO, shared_path

import tcore
from tcore.cli import main


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m tcore ...` run outside the source tree, so it imports the installed package."""
    return subprocess.run([sys.executable, "-m", "tcore", *args], capture_output=True, text=True,
                          cwd=Path(tempfile.gettempdir()), env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _installed_distribution() -> metadata.Distribution:
    """The `tcore` distribution installed in this interpreter's site-packages."""
    (dist,) = metadata.Distribution.discover(name="tcore", path=[sysconfig.get_paths()["purelib"]])
    return dist


def _is_editable(dist: metadata.Distribution) -> bool:
    direct = dist.read_text("direct_url.json")
    return bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))


@functools.lru_cache(maxsize=None)
def _installed_files() -> list[str]:
    """Files of the installed distribution; for an editable install, those of a freshly built wheel."""
    dist = _installed_distribution()
    if _is_editable(dist):
        out = Path(tempfile.mkdtemp())
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(out)], check=True, capture_output=True)
        (wheel,) = out.glob("tcore-*.whl")
        return zipfile.ZipFile(wheel).namelist()
    return [str(f) for f in dist.files]


def test_wheel_contains_the_tcore_package_only():
    tops = {name.split("/")[0] for name in _installed_files()}
    tops = {t for t in tops if not t.endswith((".dist-info", ".data")) and t not in {"..", "__pycache__"}}
    assert tops == {"tcore"}, tops


def test_wheel_ships_the_papers_split_lists_with_their_licence():
    splits = {name for name in _installed_files() if name.startswith("tcore/evaluation/splits/")}
    assert splits == {f"tcore/evaluation/splits/{name}" for name in (
        "davis_vallist_480_880.txt", "jhmdb_vallist.txt", "vip_vallist.txt", "LICENSE-T-CORE", "README.md")}


def test_tests_import_the_installed_package_not_a_shadow():
    dist = _installed_distribution()
    assert dist.version == tcore.__version__
    if not _is_editable(dist):  # CI: a regular install, never the source tree
        assert Path(sysconfig.get_paths()["purelib"]) in Path(tcore.__file__).parents


def test_inference_package_never_imports_training():
    for path in Path(tcore.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n == "training" or n.startswith("training.") for n in names), path


def test_import_tcore_is_light():
    code = ("import sys, tcore; heavy = [m for m in ('timm', 'av', 'huggingface_hub', 'safetensors', 'cv2', "
            "'scipy') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]" and out.stderr == ""


def test_public_names_resolve():
    for name in ("tcore_vits16", "tcore_vitb16", "load_backbone", "TCoReBackbone", "list_models"):
        assert callable(getattr(tcore, name))
    with pytest.raises(AttributeError):
        tcore.not_a_name  # noqa: B018


def test_version_flag():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"tcore {tcore.__version__}"


_HEAVY_AFTER = """
import json, sys
from tcore.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    results.append([argv, code, [m for m in ("torch", "timm") if m in sys.modules]])
print(json.dumps(results))
"""


def _cli_in_process(*argvs: list[str]) -> list:
    """[argv, exit status, heavy modules imported so far] of each command, run in turn in one interpreter."""
    out = subprocess.run([sys.executable, "-c", _HEAVY_AFTER, json.dumps(list(argvs))], capture_output=True,
                         text=True, cwd=Path(tempfile.gettempdir()), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_and_version_import_neither_torch_nor_timm():
    from tcore.cli import _COMMANDS

    argvs = [["--help"], ["--version"], *[[name, "--help"] for name in _COMMANDS]]
    assert {"propagate", "eval", "convert", "inspect", "download", "models"} <= set(_COMMANDS)
    for argv, code, heavy in _cli_in_process(*argvs):
        assert code == 0 and heavy == [], (argv, code, heavy)


def test_a_missing_input_is_reported_before_the_model_is_loaded(tmp_path):
    missing = str(tmp_path / "nope.pth")
    results = _cli_in_process(["convert", missing, "-o", str(tmp_path / "out")], ["inspect", missing],
                              ["propagate", str(tmp_path / "no_frames"), missing, "-o", str(tmp_path / "o")])
    for argv, code, heavy in results:
        assert code == 1 and heavy == [], (argv, code, heavy)
    out = _cli("convert", missing, "-o", str(tmp_path / "out"))
    assert out.stderr.startswith(f"tcore: error: checkpoint {missing}: no such file")


def test_cli_convert_then_load_the_folder(tmp_path, tiny_backbone, capsys):
    ckpt = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in tiny_backbone.state_dict().items()}}, ckpt)
    assert main(["convert", str(ckpt), "-o", str(tmp_path / "conv")]) == 0
    assert capsys.readouterr().err == ""
    config = json.loads((tmp_path / "conv" / "config.json").read_text())
    assert config["source"] == "teacher_checkpoint.pth" and len(config["source_sha256"]) == 64
    loaded = tcore.TCoReBackbone.from_pretrained(str(tmp_path / "conv"))
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(loaded.patch_tokens(x), tiny_backbone.patch_tokens(x))


def test_cli_inspect_prints_architecture_and_sha256(capsys):
    assert main(["inspect", str(shared_path("golden", "vit_tiny_official.pth")), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"]["depth"] == 2 and len(report["sha256"]) == 64


def test_cli_download_offline_fails_with_one_clear_message(tmp_path):
    out = _cli("download", "tcore_vits16.in1k", "--cache-dir", str(tmp_path))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("tcore: error: could not get tcore_vits16.in1k")
    assert "Traceback" not in out.stderr


def test_cli_bad_checkpoint_is_one_line_error(tmp_path):
    """Run as users run it (`python -m tcore` outside the source tree): all it prints is the error and the hint."""
    (tmp_path / "junk.pth").write_bytes(b"junk")
    out = _cli("inspect", str(tmp_path / "junk.pth"))
    assert out.returncode == 1 and out.stdout == "" and "Traceback" not in out.stderr
    error, hint = out.stderr.splitlines()
    assert error.startswith(f"tcore: error: {tmp_path / 'junk.pth'}") and hint == "(run with --debug for the traceback)"


def test_cli_models_lists_the_release_table():
    out = _cli("models")
    assert out.returncode == 0 and "tcore_vitb16.k400" in out.stdout and "66.4" in out.stdout
