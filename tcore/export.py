"""Deployment: a backbone's dense features as an ONNX file or a `torch.export` program, with a
dynamic batch, height and width (any multiple of the patch size).

What the exported graph computes is the feature API's `forward_features_dict` without masks:

- input ``pixel_values``: (B, 3, H, W) float32, ImageNet-normalised (the backbone's `mean`/`std`,
  stored in the ONNX file's metadata), H and W multiples of the patch size p;
- output ``patch_tokens``: (B, H/p, W/p, D) float32, the final-LayerNorm patch tokens on their grid,
  without CLS and registers: the dense features tcore's label propagation uses (`patch_tokens`);
- output ``cls_token``: (B, D) float32, the final-LayerNorm class token.

The position table is resized inside the graph for the input's size (for T-CoRe: bicubic with
antialias, ONNX `Resize` with `antialias=1`, opset >= 18), so one file serves every size. The
exporters need torch >= 2.6 and, for ONNX, the ``export`` extra (onnx, onnxscript, onnxruntime).
docs/export.md says how to run the files and what does not export.
"""
from __future__ import annotations

import copy
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .architecture import FeatureAPI
from .errors import InvalidInputError, InvalidTypeError, MissingDependencyError

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "OnnxExport", "check_export_size", "check_onnx_output", "export_onnx",
           "export_program"]

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("patch_tokens", "cls_token")
_ONNX_SUFFIX = ".onnx"
_ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
_MAX_ONNX_BYTES = 2 * 1024 ** 3 - (64 << 20)  # protobuf's 2 GiB limit on one file, less room for the graph
_CHECK_TOLERANCE = 1e-3  # onnxruntime vs PyTorch, max |diff| of final-normed tokens; more is an exporter bug


class _DenseFeatures(nn.Module):
    """The exported function: (B, 3, H, W) -> (patch_tokens (B, h, w, D), cls_token (B, D))."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone.forward_features_dict(pixel_values)
        return features["patches"], features["cls"]


def _check_backbone(backbone: Any, argument: str) -> nn.Module:
    if not isinstance(backbone, FeatureAPI) or not isinstance(backbone, nn.Module):
        raise InvalidTypeError(f"{argument}: expected a tcore backbone (tcore.load_backbone(...) makes one from a "
                               f"name, a file or a timm ViT), got {type(backbone).__name__}")
    return backbone


def _exported_module(backbone: nn.Module) -> _DenseFeatures:
    """What is traced: a float32, CPU, eval-mode copy of the backbone (the caller's model is left as it is)."""
    return _DenseFeatures(copy.deepcopy(backbone).float().cpu()).eval()


def check_export_size(size: Any, patch_size: int, argument: str = "size") -> tuple[int, int] | None:
    """A fixed (H, W) input size checked against the patch size, or None (dynamic height and width).

    Raises:
        InvalidInputError: not two integers, or not positive multiples of `patch_size` (the message
            names `argument` and the nearest valid size).
    """
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{argument} {size!r}: expected (H, W) in pixels, or none for any size") from err
    if min(h, w) < patch_size or h % patch_size or w % patch_size:
        fix = f"{max(1, h // patch_size) * patch_size}x{max(1, w // patch_size) * patch_size}"
        raise InvalidInputError(f"{argument} {h}x{w}: height and width must be positive multiples of the patch size "
                                f"{patch_size}, e.g. {fix} (or no {argument}: a graph that takes any multiple)")
    return h, w


def _require_exporter() -> None:
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters or not hasattr(torch.export, "Dim"):
        raise MissingDependencyError(f"exporting needs torch >= 2.6 (torch.export with dynamic shapes); this is "
                                     f"torch {torch.__version__}: pip install -U torch")


def _trace_input(patch_size: int, size: tuple[int, int] | None) -> torch.Tensor:
    """An example input: batch 2 and, for a dynamic graph, 3x4 patches (sizes 0 and 1 would be
    specialised by torch.export; unequal sides keep height and width apart)."""
    h, w = size or (3 * patch_size, 4 * patch_size)
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))


def _dynamic_shapes(patch_size: int, size: tuple[int, int] | None) -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    shapes: dict[int, Any] = {0: Dim("batch")}
    if size is None:  # derived dims: H = p * h, so every size is a multiple of the patch
        shapes.update({2: patch_size * Dim("h"), 3: patch_size * Dim("w")})
    return {INPUT_NAME: shapes}


def export_program(backbone: nn.Module, *, size: tuple[int, int] | None = None) -> torch.export.ExportedProgram:
    """`torch.export` of a backbone's dense features (see the module docstring for inputs/outputs).

    Args:
        backbone: a tcore backbone (`TCoReBackbone`, or any ViT from `tcore.load_backbone`); a
            float32, CPU, eval-mode copy of it is exported (the model itself is left as it is).
        size: None for a dynamic height and width (multiples of the patch size, at least 2 patches
            each: torch.export specialises sizes 0 and 1), or a fixed (H, W) in pixels. The batch is
            dynamic either way.

    Returns:
        The `ExportedProgram`; `program.module()(pixel_values)` gives (patch_tokens, cls_token).

    Raises:
        InvalidTypeError: not a tcore backbone. InvalidInputError: a size that is not a multiple of
        the patch size. MissingDependencyError: torch older than 2.6.
    """
    backbone = _check_backbone(backbone, "backbone")
    patch = int(backbone.patch_size)
    size = check_export_size(size, patch)
    _require_exporter()
    module = _exported_module(backbone)
    with torch.no_grad():
        return torch.export.export(module, (_trace_input(patch, size),),
                                   dynamic_shapes=_dynamic_shapes(patch, size), strict=False)


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote, and how well onnxruntime agrees with PyTorch on it.

    Attributes:
        path: the .onnx file (weights inside it).
        opset: the ONNX opset of the graph.
        dynamic_size: True when height and width are dynamic (else fixed at `check_shape`'s).
        check_shape: the (B, 3, H, W) input the file was checked at: unlike the traced input
            (2, 3, 3p, 4p) when the size is dynamic.
        max_abs_error: max |onnxruntime - PyTorch| over both outputs at `check_shape`.
    """

    path: Path
    opset: int
    dynamic_size: bool
    check_shape: tuple[int, int, int, int]
    max_abs_error: float


def check_onnx_output(path: str | os.PathLike, argument: str = "path") -> Path:
    """What an ONNX export needs before any model is loaded: an output path ending in .onnx (not a
    folder, in a writable place) and the ``export`` extra.

    Raises:
        InvalidInputError: another suffix, or a folder. PermissionError: not writable.
        MissingDependencyError: onnx, onnxscript or onnxruntime is missing, or torch is older than 2.6.
    """
    import importlib.util

    from ._outputs import check_output_file

    file = Path(path).expanduser()
    if file.suffix.lower() != _ONNX_SUFFIX:
        raise InvalidInputError(f"{argument} {str(path)!r}: an ONNX file must end in {_ONNX_SUFFIX}, "
                                f"e.g. {str(file.with_suffix(_ONNX_SUFFIX))!r}")
    file = check_output_file(file, argument, {_ONNX_SUFFIX})
    missing = [name for name in _ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(f"exporting to ONNX needs {', '.join(missing)} (not installed): "
                                     f'pip install "tcore[export]"')
    _require_exporter()
    return file


def _name_output_axes(program: Any) -> None:
    """Name the token grid's symbolic axes h and w, as in the input's 16*h, 16*w (torch calls them s0, s1)."""
    patches = program.model.graph.outputs[0].shape  # (batch, h, w, D)
    program.rename_axes({patches[i]: name for i, name in ((1, "h"), (2, "w")) if patches.is_dynamic(i)})


def _metadata(backbone: nn.Module, metadata: dict[str, str] | None) -> dict[str, str]:
    return {"producer": f"tcore {__version__}", "patch_size": str(int(backbone.patch_size)),
            "mean": ",".join(f"{v:g}" for v in backbone.mean), "std": ",".join(f"{v:g}" for v in backbone.std),
            "inputs": f"{INPUT_NAME}: (B, 3, H, W) float32, ImageNet-normalised, H and W multiples of patch_size",
            "outputs": f"{OUTPUT_NAMES[0]}: (B, H/patch_size, W/patch_size, D) final-normed patch tokens; "
                       f"{OUTPUT_NAMES[1]}: (B, D) final-normed class token",
            **(metadata or {})}


def export_onnx(backbone: nn.Module, path: str | os.PathLike, *, size: tuple[int, int] | None = None,
                metadata: dict[str, str] | None = None) -> OnnxExport:
    """Write a backbone's dense features as one ONNX file and check it with onnxruntime.

    The graph takes ``pixel_values`` and gives ``patch_tokens`` and ``cls_token`` (see the module
    docstring). It is exported with torch's dynamo exporter at torch's default opset and checked
    with onnxruntime against PyTorch at an input of another batch and size than the traced one, so
    a graph that silently fixed a size would fail. The file is written atomically, and only when it
    passes that check.

    Args:
        backbone: a tcore backbone (`TCoReBackbone`, or any ViT from `tcore.load_backbone`); a
            float32, CPU, eval-mode copy of it is exported (the model itself is left as it is).
        path: the file to write, ending in .onnx.
        size: None (dynamic height and width: any multiple of the patch size) or a fixed (H, W).
        metadata: extra string entries for the file's `metadata_props` (e.g. the source checkpoint);
            tcore adds the producer, patch size, mean, std and the input/output description.

    Returns:
        An `OnnxExport` (path, opset, the check's input shape and max |onnxruntime - PyTorch|).

    Raises:
        InvalidTypeError: not a tcore backbone. InvalidInputError: `path` not ending in .onnx, or a
        size that is not a multiple of the patch size, or weights over the 2 GiB of one ONNX file.
        MissingDependencyError: the ``export`` extra (onnx, onnxscript, onnxruntime) or torch >= 2.6.
        RuntimeError: onnxruntime disagrees with PyTorch by more than 1e-3 (an exporter bug).
    """
    backbone = _check_backbone(backbone, "backbone")
    patch = int(backbone.patch_size)
    size = check_export_size(size, patch)
    target = check_onnx_output(path)
    n_bytes = 4 * sum(t.numel() for t in backbone.state_dict().values())  # exported in float32
    if n_bytes > _MAX_ONNX_BYTES:
        raise InvalidInputError(f"backbone: {n_bytes / 2 ** 30:.1f} GiB of weights, more than one ONNX file holds "
                                "(2 GiB); export a smaller backbone, or use export_program (torch.export)")
    from .files import write_atomic

    module = _exported_module(backbone)
    with torch.no_grad():
        program = torch.onnx.export(module, (_trace_input(patch, size),), dynamo=True, verbose=False,
                                    input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                    dynamic_shapes=_dynamic_shapes(patch, size))
    _name_output_axes(program)
    program.model.metadata_props.update(_metadata(backbone, metadata))
    check = (1, 3, *(size or (5 * patch, 2 * patch)))
    error = float("nan")

    def save_and_check(tmp: str) -> None:  # a file that fails the check never replaces `target`
        nonlocal error
        program.save(tmp, external_data=False)
        error = _compare_with_onnxruntime(Path(tmp), module, check)
        if not error <= _CHECK_TOLERANCE:
            raise RuntimeError(f"{target}: onnxruntime differs from PyTorch by {error:.2e} at {check} (more than "
                               f"{_CHECK_TOLERANCE:g}); please report this with your torch and onnxscript versions")

    write_atomic(target, save_and_check)
    opset = next(v for domain, v in program.model.opset_imports.items() if domain == "")
    return OnnxExport(target, int(opset), size is None, check, error)


def _compare_with_onnxruntime(path: Path, module: nn.Module, shape: tuple[int, int, int, int]) -> float:
    """max |onnxruntime - PyTorch| over both outputs for a seeded input of `shape`."""
    import onnxruntime

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        expected = module(x)
    return max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))
