"""Deployment: `tcore convert --format onnx` and `tcore.export` give graphs that really are dynamic
(batch, height, width: any multiple of the patch) and agree with PyTorch; `torch.export` works too.

A T-CoRe ViT resizes its position table at run time, so a graph traced at one size could silently
keep that size: each check runs at sizes and batches unlike the traced one (2 x 48x64), square and
not, larger (an upsampled table) and smaller (a downsampled, antialiased one) than the 14x14 table.
Two exports in all (a few seconds each): a tiny random model, and the official tiny ViT through the CLI.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import golden_inputs, shared_path

import tcore
from tcore.cli import main
from tcore.errors import InvalidInputError, MissingDependencyError, UserError
from tcore.export import INPUT_NAME, OUTPUT_NAMES, check_onnx_output, export_onnx, export_program

ort = pytest.importorskip("onnxruntime")

# (B, H, W): 14x14 patches (the table's own grid), 30x55 (upsampled, non-square), 2x5 (downsampled, non-square)
SIZES = [(1, 224, 224), (2, 480, 880), (3, 32, 80)]


def _run_onnx(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return tcore.TCoReBackbone(embed_dim=32, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.mark.parametrize("batch,height,width", SIZES)
def test_onnx_graph_equals_pytorch_at_batches_and_sizes_unlike_the_traced_one(tiny, tiny_onnx, batch, height, width):
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
    got = _run_onnx(tiny_onnx.path, x)
    with torch.no_grad():
        expected = tiny.forward_features_dict(x)
    assert got["patch_tokens"].shape == (batch, height // 16, width // 16, 32)
    np.testing.assert_allclose(got["patch_tokens"], expected["patches"].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["cls_token"], expected["cls"].numpy(), rtol=0, atol=1e-4)


def test_onnx_file_names_its_axes_and_says_what_it_takes(tiny_onnx):
    import onnx

    session = ort.InferenceSession(str(tiny_onnx.path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [(INPUT_NAME, ["batch", 3, "16*h", "16*w"])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("patch_tokens", ["batch", "h", "w", 32]), ("cls_token", ["batch", 32])]
    meta = {p.key: p.value for p in onnx.load(str(tiny_onnx.path)).metadata_props}
    assert meta["patch_size"] == "16" and meta["mean"] == "0.485,0.456,0.406" and meta["std"] == "0.229,0.224,0.225"
    assert tiny_onnx.dynamic_size and tiny_onnx.opset >= 18 and tiny_onnx.max_abs_error < 1e-4
    assert tiny_onnx.check_shape[0] == 1 and tiny_onnx.check_shape[2:] != (48, 64)  # not the traced input


def test_tcore_convert_onnx_of_the_official_tiny_vit_gives_the_official_outputs(tmp_path, capsys):
    from safetensors.torch import load_file

    ckpt = shared_path("golden", "vit_tiny_official.pth")
    gold = load_file(str(shared_path("golden", "vit_tiny_official_outputs.safetensors")))
    out = tmp_path / "tiny.onnx"
    assert main(["convert", str(ckpt), "-o", str(out), "--format", "onnx"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (opset ")
    model = tcore.load_backbone(ckpt)
    for h, w in ((224, 224), (480, 880), (320, 480)):  # the golden sizes: 14x14, 30x55, 20x30 patches
        x = torch.from_numpy(golden_inputs().pattern_image(h, w))[None]
        got = _run_onnx(out, x)
        with torch.no_grad():
            ours = model.forward_features_dict(x)
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
