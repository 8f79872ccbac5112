"""The `tcore` command line (also `python -m tcore`).

Each subcommand is a thin function over one public function. Results go to stdout; progress,
warnings and errors go to stderr. A user's mistake (a `tcore.errors.UserError`, or running out of
memory) prints one `tcore: error: ...` line and exits 1; anything else is a bug and keeps its
traceback; `--debug` always shows it. Ctrl-C (SIGINT) and SIGTERM (a scheduler, `docker stop`)
stop a run alike: partial outputs are removed, one line is printed, and the exit status is 130 or
143. The environment variable `TCORE_MAX_IMAGE_PIXELS` raises PIL's decompression-bomb limit
(`PIL.Image.MAX_IMAGE_PIXELS`) for images that are genuinely that large.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ._version import __version__
from .errors import InvalidInputError, MissingFileError, user_error_message

__all__ = ["main"]

_EXAMPLES = {
    "propagate": "tcore propagate frames/ 00000.png -o masks/ --overlay overlay.mp4   "
                 "(or a folder of masks named like the frames: tcore propagate frames/ annotations/ -o masks/)",
    "demo": "tcore demo --model path/to/checkpoint.pth",
    "convert": "tcore convert vits16_400ep_K400.pth -o tcore-vits16-k400/ [--format timm]   "
               "(or: -o vits16.onnx --format onnx)",
    "inspect": "tcore inspect some_checkpoint.pth --json",
    "download": "tcore download tcore_vits16.k400 tcore_vitb16",
    "eval": "tcore eval davis --root data/DAVIS --model tcore_vits16 -o results/",
    "features": "tcore features video.mp4 -o pca.mp4   (or: --point 320 200 -o match.gif)",
    "app": "tcore app --port 7860",
}

_SIGPIPE_STATUS = 141  # 128 + SIGPIPE: the status of a Unix tool whose reader went away (as `yes | head`)

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def _command(name: str, help_text: str):
    """Register `add_arguments` + `run` functions for a subcommand."""
    def wrap(add_arguments: Callable[[argparse.ArgumentParser], None]):
        def register(run: Callable[[argparse.Namespace], int]):
            _COMMANDS[name] = (add_arguments, run, help_text)
            return run
        return register
    return wrap


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- propagation

def _propagate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="frame folder or video file (mp4/webm/avi need the [video] extra)")
    p.add_argument("masks", metavar="FIRST_MASK|MASKS_DIR",
                   help="first-frame mask (palette PNG, grey ids, or RGB colours), or a folder of masks named like "
                        "the frames, given at any frames (objects that enter later, corrections)")
    p.add_argument("-o", "--output", required=True, help="folder for the indexed PNG masks")
    _model_args(p)
    p.add_argument("--threshold", type=float, default=None, help="binarise a soft grey first mask (>= T)")
    p.add_argument("--overlay", default=None, help="also write an overlay video: OUT.mp4 or OUT.gif")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _model_args(p: argparse.ArgumentParser, preset: bool = True,
                size_help: str = "working size (floored to the patch size)",
                device_help: str = "cuda, mps or cpu (default: the best available)") -> None:
    """--model, --preset (unless `preset` is False), --size, --device, --batch-size, --precision."""
    p.add_argument("--model", default=None,
                   help="tcore_vits16[.in1k] | tcore_vitb16 | checkpoint path | save_pretrained folder | org/repo "
                        "(default: tcore_vits16, Kinetics-400)")
    if preset:
        p.add_argument("--preset", default=None, choices=["davis", "jhmdb", "vip"],
                       help="the paper's exact protocol (default: its hyper-parameters, aspect kept, short side 480)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None, help=size_help)
    p.add_argument("--device", default=None, help=device_help)
    p.add_argument("--batch-size", type=_positive_int, default=8, help="frames per backbone call")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: faster on GPUs, not bit-exact (opt-in)")


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


@_command("propagate", "propagate masks (first frame, or any frames) through a video")(_propagate_args)
def _propagate(args: argparse.Namespace) -> int:
    video, masks = _existing(args.video, "video"), _existing(args.masks, "masks")
    out = _output_folder(args.output, "-o", inputs={"the video": video, "the masks": masks})
    overlay = _overlay_file(args.overlay) if args.overlay else None
    _check_device(args.device)
    from ._outputs import staged_folder
    from .io import read_video
    from .propagation import iter_masks

    with staged_folder(out, "propagation") as staging:  # claimed before the model loads: a busy -o stops at once
        frames = read_video(video)
        stream = iter_masks(frames, masks, model=args.model, preset=args.preset,
                            size=tuple(args.size) if args.size else None, threshold=args.threshold,
                            device=args.device, batch_size=args.batch_size, precision=args.precision,
                            progress=not args.quiet)
        with contextlib.closing(stream):  # a run that stops early (a failed write) stops its decoding thread too
            n_written = _write_masks(stream, frames, staging, video, overlay)
    print(f"wrote {n_written} masks to {out}" + (f" and {overlay}" if overlay else ""))
    return 0


def _write_masks(stream: Any, frames: Any, folder: Path, video: Path, overlay: Path | None) -> int:
    """Write the stream's masks into `folder` (PNG writes overlap the propagation), and the overlay
    (whole or not at all: its temporary file keeps the suffix that picks the codec). A write that
    fails (a full disk) stops the run at the next mask, naming the file."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from .files import write_atomic
    from .io import read_video, write_mask, write_overlay

    palette = stream.palette
    pending = threading.BoundedSemaphore(16)  # PNG writes overlap propagation, at most 16 in flight
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures: deque = deque()
        n_written = 0

        def masks():
            nonlocal n_written
            for t, mask in stream:
                while futures and futures[0].done():  # a failed write is raised here, not after the run
                    futures.popleft().result()
                    n_written += 1
                pending.acquire()
                future = pool.submit(write_mask, folder / f"{frames.names[t]}.png", mask, palette)
                future.add_done_callback(lambda _: pending.release())
                futures.append(future)
                yield mask

        if overlay is not None:
            write_atomic(overlay, lambda tmp: write_overlay(tmp, read_video(video), masks(), palette=palette,
                                                            fps=frames.fps or 10),
                         temporary=overlay.with_name(f".{overlay.stem}.partial-{os.getpid()}{overlay.suffix}"))
        else:
            for _ in masks():
                pass
        for future in futures:
            future.result()
    return n_written + len(futures)


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="as tcore propagate --model (default: tcore_vits16, Kinetics-400)")
    p.add_argument("--video", default=None, help="your own video (frame folder or file); needs --mask")
    p.add_argument("--mask", default=None, help="its first-frame mask")
    p.add_argument("--threshold", type=float, default=None, help="binarise a soft grey first mask (>= T)")
    p.add_argument("-o", "--output", default="tcore-demo", help="folder for masks/ and overlay.gif")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@_command("demo", "propagate the built-in clip (or your own video) and score it")(_demo_args)
def _demo(args: argparse.Namespace) -> int:
    for path, what in ((args.video, "--video"), (args.mask, "--mask")):
        if path is not None:
            _existing(path, what)
    _output_folder(args.output, "-o")
    _check_device(args.device)
    from .demo import run_demo

    result = run_demo(model=args.model, video=args.video, mask=args.mask, out_dir=args.output,
                      device=args.device, progress=not args.quiet, threshold=args.threshold)
    if result.scores is not None:  # percent with one decimal, as the paper and `tcore eval`
        print(f"{'(percent)':<24}{'J&F':>7}{'J':>7}{'F':>7}")
        for label, scores in (("tcore propagation", result.scores), ("copy the first mask", result.copy_scores)):
            print(f"{label:<24}" + "".join(f"{100 * sum(scores[k]) / len(scores[k]):7.1f}" for k in ("JF", "J", "F")))
    print(f"wrote {result.mask_dir}/ and {result.overlay}")
    return 0


# ------------------------------------------------------------------------------ pictures and app

def _features_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="frame folder or video file (mp4/webm/avi need the [video] extra)")
    p.add_argument("-o", "--output", required=True, help="OUT.mp4 (or another video suffix) or OUT.gif")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--pca", action="store_true",
                      help="[frame | first three principal components of its patch features as RGB] (the default)")
    what.add_argument("--point", type=float, nargs=2, metavar=("X", "Y"), default=None,
                      help="[frame 0 with pixel (X, Y) | its cosine affinity heat map in each frame]")
    _model_args(p)
    p.add_argument("--fps", type=float, default=None, help="frames per second (default: the video's, else 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@_command("features", "feature pictures: PCA colours of the patch features, or one point's correspondence")(
    _features_args)
def _features(args: argparse.Namespace) -> int:
    _existing(args.video, "video")
    _overlay_file(args.output, "-o")
    _check_device(args.device)
    from .pictures import write_feature_video

    out = write_feature_video(args.video, args.output, point=tuple(args.point) if args.point else None,
                              model=args.model, preset=args.preset, size=tuple(args.size) if args.size else None,
                              device=args.device, batch_size=args.batch_size, precision=args.precision,
                              fps=args.fps, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def _app_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--share", action="store_true",
                   help="also publish a temporary public link through Gradio's share servers (off by default)")
    p.add_argument("--model", default=None,
                   help="model selected when the page opens: any --model value of tcore propagate "
                        "(default: tcore_vits16, Kinetics-400)")
    p.add_argument("--device", default=None, help="device selected when the page opens (default: the best available)")


@_command("app", "local web app (extra [app]): open a video, paint the first mask, watch it propagate, look at "
                 "features")(_app_args)
def _app(args: argparse.Namespace) -> int:
    _check_device(args.device)
    from .app import launch

    launch(host=args.host, port=args.port, share=args.share, model=args.model, device=args.device)
    return 0


# ------------------------------------------------------------------------------------ evaluation

def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=["davis", "jhmdb", "vip", "ytvos", "mose"],
                   help="davis (DAVIS-2017 val, J&F), jhmdb (PCK) or vip (mIoU): the paper's preset of that name; "
                        "ytvos (YouTube-VOS 2018/2019) or mose: submission zip, J&F when every frame has ground truth")
    p.add_argument("--root", required=True, help="the dataset folder, in its official layout")
    p.add_argument("-o", "--output", default="tcore-eval",
                   help="results folder; outputs go to OUTPUT/BENCHMARK/, never into the dataset (default: tcore-eval)")
    _model_args(p, preset=False,  # the benchmark's own preset
                size_help="override the paper's working size (quick runs; not comparable with the paper)",
                device_help="cuda, mps or cpu (default: the best available; under torchrun each rank its local GPU)")
    p.add_argument("--list", dest="list_file", default=None,
                   help="another split: a list file, one video per line (default: the paper's split, shipped with "
                        "tcore; DAVIS: the dataset's ImageSets/2017/val.txt when present)")
    p.add_argument("--split", default=None,
                   help="ytvos/mose: the split folder under --root (default: valid; train has ground truth)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete this benchmark's outputs in the results folder and start again (default: resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@_command("eval", "run a benchmark (the paper's DAVIS-2017, JHMDB, VIP; YouTube-VOS; MOSE)")(_eval_args)
def _eval(args: argparse.Namespace) -> int:
    _output_folder(args.output, "-o")
    _check_device(args.device)
    from .distributed import torchrun_env
    from .evaluation import evaluate, format_table

    summary = evaluate(args.benchmark, args.root, model=args.model, out_dir=args.output, list_file=args.list_file,
                       split=args.split, overwrite=args.overwrite, device=args.device, batch_size=args.batch_size,
                       precision=args.precision, size=tuple(args.size) if args.size else None,
                       progress=not args.quiet)
    rank, _, _ = torchrun_env()
    if rank != 0:  # under torchrun, rank 0 reports
        return 0
    print(format_table(summary))
    if summary["n_resumed"]:
        print(f"resumed: {summary['n_resumed']} of {summary['n_videos']} videos were already finished and were "
              f"scored without predicting them again (--overwrite redoes them)")
    print(f"wrote {summary['out_dir']} (summary.json, CSV files, predictions)")
    return 0


# --------------------------------------------------------------------------------- weights tools

def _existing(path: str, what: str) -> Path:
    """`path` as a Path, or the one-line error for a missing file (before any model is loaded)."""
    if not Path(path).exists():
        raise MissingFileError(f"{what} {path}: no such file or folder")
    return Path(path)


def _output_folder(path: str, argument: str, inputs: dict[str, Path] | None = None) -> Path:
    """An output folder checked before any model is loaded: writable, not a file, not an input folder."""
    from ._outputs import check_output_folder

    folder = check_output_folder(path, argument)
    for what, source in (inputs or {}).items():
        if source.is_dir() and folder.resolve() == source.resolve():
            raise InvalidInputError(f"{argument} {path!r}: {what} folder itself; outputs named like its files would "
                                    "replace them: pick another folder")
    return folder


def _overlay_file(path: str, argument: str = "--overlay") -> Path:
    """A .gif or video file path checked before any model is loaded (suffix, folder, writable)."""
    from ._outputs import check_output_file
    from .io.overlay import VIDEO_SUFFIXES

    return check_output_file(path, argument, {".gif", *VIDEO_SUFFIXES})


def _check_device(device: str | None) -> None:
    """A --device that this machine has, or the one-line error listing those it has (before any model)."""
    if device is not None:
        from .devices import resolve_device

        resolve_device(device, argument="--device")


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="official .pth (or .safetensors / any known layout)")
    p.add_argument("-o", "--output", required=True,
                   help="folder to write config.json + model.safetensors (--format onnx: a file ending in .onnx)")
    p.add_argument("--format", default="tcore", choices=["tcore", "timm", "onnx"],
                   help="tcore (default): save_pretrained's folder, lossless; TCoReBackbone.from_pretrained, "
                        "tcore.load_backbone and, after `import tcore`, timm.create_model('local-dir:OUTPUT', "
                        "pretrained=True) read it. timm: for stock timm without tcore (a stock ViT; the class "
                        "position folded into cls_token, no mask token); tcore.load_backbone reads it too. "
                        "onnx: one .onnx file, pixel_values (B,3,H,W) -> patch_tokens (B,H/p,W/p,D), cls_token "
                        "(B,D), dynamic batch, height and width (extra [export])")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="--format onnx: fix the input size (multiples of the patch size; default: any size)")
    p.add_argument("--arch", default=None, choices=["tcore_vits16", "tcore_vitb16"],
                   help="tcore architecture (default: read from the checkpoint)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads, for sizes tcore does not know (weights do not record it)")


@_command("convert", "official checkpoint -> a folder for tcore (or stock timm): model.safetensors + config.json; "
                     "or one .onnx file (--format onnx)")(
    _convert_args)
def _convert(args: argparse.Namespace) -> int:
    source = _existing(args.checkpoint, "checkpoint")
    if args.format == "onnx":
        from .export import check_onnx_output

        check_onnx_output(args.output, "-o")  # the file name and the extra, before the model loads
    else:
        _output_folder(args.output, "-o")
    from .errors import InvalidInputError
    from .files import sha256sum
    from .models import load_backbone
    from .weights import pinned_releases

    if args.arch:
        model = load_backbone(args.arch, checkpoint=source)
    else:
        model = load_backbone(source, **({"num_heads": args.num_heads} if args.num_heads else {}))
    digest = sha256sum(source) if source.is_file() else None
    metadata = {"source": source.name, **({"source_sha256": digest} if digest else {})}
    if args.format == "onnx":
        return _write_onnx(model, args.output, args.size, metadata)
    model.release = pinned_releases().get(digest)  # a released file: the model card says so (base_model, ...)
    if args.format == "timm":
        from .backbone import TCoReBackbone
        from .hub import export_for_timm

        if not isinstance(model, TCoReBackbone):
            raise InvalidInputError(f"--format timm: {source} is not a T-CoRe checkpoint ({type(model).__name__}); "
                                    "timm layouts are already timm's: use --format tcore")
        export_for_timm(model, args.output, **metadata)
    else:
        model.save_pretrained(args.output, config=metadata)
    out = Path(args.output)
    print(f"wrote {out / 'config.json'}, {out / 'model.safetensors'} and {out / 'README.md'} (a model card)")
    return 0


def _write_onnx(model: Any, output: str, size: list[int] | None, metadata: dict[str, str]) -> int:
    """`tcore convert --format onnx` once the model is loaded: export, check, say what the file takes."""
    from .export import check_export_size, export_onnx

    p = int(model.patch_size)
    fixed = check_export_size(size, p, "--size")
    result = export_onnx(model, output, size=fixed, metadata=metadata)
    sizes = f"any H, W multiples of {p}" if fixed is None else f"{fixed[0]}x{fixed[1]}"
    print(f"wrote {result.path} (opset {result.opset}): pixel_values (B,3,H,W), {sizes} -> patch_tokens "
          f"(B,H/{p},W/{p},{model.embed_dim}), cls_token (B,{model.embed_dim}); onnxruntime vs PyTorch at "
          f"{'x'.join(map(str, result.check_shape))}: max |diff| {result.max_abs_error:.1e}")
    return 0


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a .pth / .safetensors file or a save_pretrained folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


@_command("inspect", "what a checkpoint is, whether tcore.load_backbone loads it, its layout, keys, architecture "
                     "and sha256")(_inspect_args)
def _inspect(args: argparse.Namespace) -> int:
    path = _existing(args.checkpoint, "checkpoint")
    from .checkpoint import inspect_checkpoint

    report = inspect_checkpoint(path)
    report = {"path": report.pop("path"), "what": report.pop("what"), "load_backbone": _load_backbone_verdict(path),
              **report}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    name, strict = report.pop("matches"), report.pop("loads_strictly")
    report["tcore_arch"] = f"{name} (loads strictly)" if name and strict else name or "none"
    verdict = report["load_backbone"]
    report["load_backbone"] = f"loads it: {verdict['as']}" if verdict["loads"] else f"fails: {verdict['error']}"
    width = max(len(k) for k in report)
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        print(f"{key:<{width}}  {value}")
    return 0


def _load_backbone_verdict(path: Path) -> dict[str, Any]:
    """Whether `tcore.load_backbone(path)` loads a file, and as what (it is tried: the honest answer)."""
    from .errors import UserError
    from .models import load_backbone

    try:
        model = load_backbone(path)
    except UserError as err:
        return {"loads": False, "error": str(err)}
    if hasattr(model, "timm_name"):
        what = (f"TimmViTBackbone, timm {model.timm_name} (patch {model.patch_size}, {model.num_register_tokens} "
                f"registers, position resize {model.pos_interp!r})")
    else:
        what = f"{type(model).__name__}(" + ", ".join(f"{k}={v}" for k, v in model.arch.items()) + ")"
    return {"loads": True, "as": what}


def _download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="arch or arch.tag (default: all released weights)")
    p.add_argument("--revision", default=None, help="branch, tag or commit sha on the Hub")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: HF_HUB_CACHE)")


@_command("download", "fill the Hugging Face cache for offline use; print each file's sha256")(_download_args)
def _download(args: argparse.Namespace) -> int:
    from .files import sha256sum
    from .weights import download, get_pretrained, list_models

    names = args.names or list_models()
    for name in names:
        entry = get_pretrained(name)
        path = download(name, revision=args.revision, cache_dir=args.cache_dir)
        status = "verified" if entry.sha256 else "unverified: no sha256 pinned in the registry"
        print(f"{entry.name:<20} {sha256sum(path)}  {path}  ({status})")
    return 0


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


@_command("models", "list the released weights and the paper's numbers")(_list_args)
def _models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .weights import get_pretrained, list_models

    entries = [get_pretrained(n) for n in list_models()]
    if args.json:
        print(json.dumps([asdict(e) | {"name": e.name} for e in entries], indent=2))
        return 0
    print("the paper's numbers, percent: DAVIS-2017 val J&F, J, F; VIP mIoU; JHMDB PCK@0.1, PCK@0.2")
    print(f"{'name':<18} {'data':<12} {'epochs':>6} {'J&F':>5} {'J':>5} {'F':>5} {'mIoU':>5} {'PCK@0.1':>7} "
          f"{'PCK@0.2':>7}  file")
    for e in entries:
        s = e.scores
        print(f"{e.name:<18} {e.data:<12} {e.epochs:>6} {s.davis_jf:>5.1f} {s.davis_j:>5.1f} {s.davis_f:>5.1f} "
              f"{s.vip_miou:>5.1f} {s.jhmdb_pck01:>7.1f} {s.jhmdb_pck02:>7.1f}  {e.repo_id}/{e.filename}")
    return 0


# -------------------------------------------------------------------------------------- driver

def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcore", description="T-CoRe backbones and label propagation.")
    parser.add_argument("--version", action="version", version=f"tcore {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_arguments, _, help_text) in _COMMANDS.items():
        example = _EXAMPLES.get(name)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog=f"example: {example}" if example else None)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks and debug logs")
        add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tcore` command line; returns the exit status.

    A reader that goes away (`tcore models --json | head -1`) ends any command quietly with status
    141 (128 + SIGPIPE), as Unix tools end.
    """
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a reader that went away is noticed here, not in the interpreter's exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return _SIGPIPE_STATUS


def _main(argv: Sequence[str] | None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    run = _COMMANDS[args.command][1]
    try:
        _apply_image_limit()
        with _sigterm_as_interrupt():
            return run(args)
    except BrokenPipeError:  # the reader closed stdout: `main` ends quietly
        raise
    except _Terminated:
        _err("tcore: terminated (SIGTERM); partial outputs were removed")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _err("tcore: interrupted")
        return 128 + signal.SIGINT
    except Exception as err:
        message = user_error_message(err, memory_fix="use a smaller --size or --batch-size, or a device with more "
                                                     "memory (--device)")
        if message is None or args.debug:  # a bug (not the user's to fix): its traceback
            raise
        _err(f"tcore: error: {message}")
        _err("(run with --debug for the traceback)")
        return 1


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C is, so that every `finally` removes its partial files."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `_Terminated` (a second one kills at once); restored after.

    Only the main thread can set signal handlers; elsewhere (an app worker) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # cleaning up: a second SIGTERM is not waited for
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _apply_image_limit() -> None:
    """`TCORE_MAX_IMAGE_PIXELS=N` sets PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`)."""
    from .io._images import MAX_PIXELS_ENV

    text = os.environ.get(MAX_PIXELS_ENV)
    if text is None:
        return
    try:
        limit = int(text.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise InvalidInputError(f"environment variable {MAX_PIXELS_ENV}={text!r}: expected a number of pixels, "
                                f"e.g. {MAX_PIXELS_ENV}=1000000000 (PIL's default is 89478485)")
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limit
