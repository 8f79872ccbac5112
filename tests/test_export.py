"""Deployment: `tcore convert --format onnx` and `tcore.export` give graphs that really are dynamic
(batch, height, width: any multiple of the patch) and agree with PyTorch; `torch.export` works too.

A T-CoRe ViT resizes its position table at run time, so a graph traced at one size could silently
keep that size: each check runs at sizes and batches unlike the traced one (2 x 48x64), square and
not, larger (an upsampled table) and smaller (a downsampled, antialiased one) than the 14x14 table.
One ONNX export in all (a few seconds): the official tiny ViT (width 64, depth 2, 4 registers, LayerScale
~0.4) through `tcore convert`, checked against PyTorch at those sizes and batches and against the official
code's outputs.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from helpers import golden_inputs, shared_path

import tcore
from tcore.cli import main
from tcore.errors import InvalidInputError, MissingDependencyError, UserError
from tcore import export as tcore_export
from tcore.export import INPUT_NAME, OUTPUT_NAMES, OnnxExport, check_onnx_output, export_onnx, export_program

ort = pytest.importorskip("onnxruntime")

# (B, H, W): 14x14 patches (the table's own grid), 30x55 (upsampled, non-square), 2x5 (downsampled, non-square)
SIZES = [(1, 224, 224), (2, 480, 880), (3, 32, 80)]


def _run_onnx(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})))


@pytest.fixture(scope="module")
def official() -> torch.nn.Module:
    """The official tiny ViT, loaded in PyTorch: the reference the ONNX graph is checked against."""
    return tcore.load_backbone(shared_path("golden", "vit_tiny_official.pth"))


@pytest.fixture(scope="module")
def official_onnx(tmp_path_factory) -> tuple[OnnxExport, str]:
    """`tcore convert vit_tiny_official.pth -o tiny.onnx --format onnx`, run once through `tcore.cli.main`:
    (what `export_onnx` returned to the command, what the command printed)."""
    out, returned, printed = tmp_path_factory.mktemp("onnx") / "tiny.onnx", [], io.StringIO()

    def recorded(*args, **kwargs) -> OnnxExport:
        returned.append(export_onnx(*args, **kwargs))
        return returned[-1]

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(tcore_export, "export_onnx", recorded)
        code = main(["convert", str(shared_path("golden", "vit_tiny_official.pth")), "-o", str(out), "--format",
                     "onnx"])
    assert code == 0 and len(returned) == 1 and returned[0].path == out
    return returned[0], printed.getvalue()


@pytest.mark.parametrize("batch,height,width", SIZES)
def test_onnx_graph_equals_pytorch_at_batches_and_sizes_unlike_the_traced_one(official, official_onnx, batch, height,
                                                                              width):
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
    got = _run_onnx(official_onnx[0].path, x)
    with torch.no_grad():
        expected = official.forward_features_dict(x)
    assert got["patch_tokens"].shape == (batch, height // 16, width // 16, 64)
    np.testing.assert_allclose(got["patch_tokens"], expected["patches"].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["cls_token"], expected["cls"].numpy(), rtol=0, atol=1e-4)


def test_onnx_file_names_its_axes_and_says_what_it_takes(official_onnx):
    import onnx

    result, _ = official_onnx
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [(INPUT_NAME, ["batch", 3, "16*h", "16*w"])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("patch_tokens", ["batch", "h", "w", 64]), ("cls_token", ["batch", 64])]
    meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert meta["patch_size"] == "16" and meta["mean"] == "0.485,0.456,0.406" and meta["std"] == "0.229,0.224,0.225"
    assert result.dynamic_size and result.opset >= 18 and result.max_abs_error < 1e-4
    assert result.check_shape[0] == 1 and result.check_shape[2:] != (48, 64)  # not the traced input


def test_tcore_convert_onnx_of_the_official_tiny_vit_gives_the_official_outputs(official, official_onnx):
    from safetensors.torch import load_file

    result, printed = official_onnx
    assert printed.startswith(f"wrote {result.path} (opset {result.opset}): ")
    gold = load_file(str(shared_path("golden", "vit_tiny_official_outputs.safetensors")))
    for h, w in ((224, 224), (480, 880), (320, 480)):  # the golden sizes: 14x14, 30x55, 20x30 patches
        x = torch.from_numpy(golden_inputs().pattern_image(h, w))[None]
        got = _run_onnx(result.path, x)
        with torch.no_grad():
            ours = official.forward_features_dict(x)
        np.testing.assert_allclose(got["patch_tokens"], ours["patches"].numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got["patch_tokens"], gold[f"patches_{h}x{w}"].numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got["cls_token"], gold[f"cls_{h}x{w}"].numpy(), rtol=0, atol=1e-4)


def test_torch_export_program_is_dynamic_from_two_patches_per_side(tiny):
    program = export_program(tiny)
    for batch, height, width in SIZES:
        x = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            patches, cls = program.module()(x)
            expected = tiny.forward_features_dict(x)
        torch.testing.assert_close(patches, expected["patches"], rtol=0, atol=1e-5)
        torch.testing.assert_close(cls, expected["cls"], rtol=0, atol=1e-5)
    with pytest.raises(AssertionError, match="Guard failed"):  # documented: torch.export specialises size 1
        program.module()(torch.randn(1, 3, 16, 32))


def test_a_fixed_size_program_keeps_the_batch_dynamic_and_refuses_other_sizes(tiny):
    program = export_program(tiny, size=(32, 48))
    assert program.module()(torch.randn(5, 3, 32, 48))[0].shape == (5, 2, 3, 32)
    with pytest.raises(AssertionError, match="Guard failed"):
        program.module()(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("argv,message", [
    (["-o", "{tmp}/model.bin"], "-o '{tmp}/model.bin': an ONNX file must end in .onnx, e.g. '{tmp}/model.onnx'"),
    (["-o", "{tmp}/m.onnx", "--size", "50", "64"],
     "--size 50x64: height and width must be positive multiples of the patch size 16, e.g. 48x64"),
])
def test_cli_mistakes_are_one_line_and_write_nothing(tiny_model, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["convert", str(tiny_model / "model.safetensors"), "--format", "onnx", *argv]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("tcore: error: " + message.format(tmp=tmp_path)) and len(err) == 2
    assert list(tmp_path.iterdir()) == []


def test_python_mistakes_are_user_errors(tiny, tmp_path):
    with pytest.raises(InvalidInputError, match=r"size 40x64: .* multiples of the patch size 16, e.g. 32x64"):
        export_onnx(tiny, tmp_path / "m.onnx", size=(40, 64))
    with pytest.raises(InvalidInputError, match="must end in .onnx"):
        export_onnx(tiny, tmp_path / "m.pt")
    with pytest.raises(UserError, match="expected a tcore backbone"):
        export_program(torch.nn.Linear(2, 2))


def test_a_missing_export_extra_is_named_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r'needs onnxscript \(not installed\): pip install "tcore\[export\]"'):
        check_onnx_output(tmp_path / "m.onnx")
    monkeypatch.setattr("tcore.models.load_backbone", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "ckpt.pth").write_bytes(b"")
    assert main(["convert", str(tmp_path / "ckpt.pth"), "-o", str(tmp_path / "m.onnx"), "--format", "onnx"]) == 1
    assert 'tcore[export]' in capsys.readouterr().err
