"""Export the teacher of a training checkpoint in the formats `tcore` loads (docs/training-recipe.md §10.3).

    python -m training.export runs/vits16_k400/checkpoints/ckpt_00374400.pt -o weights/vits16_k400
    python -c "import tcore; m = tcore.tcore_vits16(pretrained='weights/vits16_k400')"

Writes `config.json` + `model.safetensors` (tcore's `save_pretrained` format) and
`teacher_checkpoint.pth` = {"teacher": {"backbone.<name>": ..., "dino_head.<name>": ...}}, the
official layout that DINOv2-style loaders and `tcore.tcore_vits16(pretrained=<.pth>)` read.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcore.errors import MissingFileError, user_error_message
from training.checkpoint import export_teacher, latest_checkpoint, load_checkpoint

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Export one checkpoint's teacher.

    Returns:
        0, or 1 after printing `training.export: error: <message>` for a user's mistake (a missing,
        damaged or foreign checkpoint, an output folder that cannot be written); a bug keeps its
        traceback, and `--debug` shows the traceback of a mistake too.
    """
    parser = argparse.ArgumentParser(prog="training.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a ckpt_*.pt file, or a run's checkpoints/ folder (its latest)")
    parser.add_argument("-o", "--output", required=True, help="folder to write")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a mistake too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder, pth = export_teacher(load_checkpoint(_checkpoint_file(Path(args.checkpoint))), args.output)
    except Exception as err:
        message = user_error_message(err)
        if message is None or args.debug:
            raise
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 1
    print(f"{folder}/model.safetensors + config.json\n{pth}")
    return 0


def _checkpoint_file(path: Path) -> Path:
    """`path` itself, or the latest checkpoint of the folder `path`."""
    if not path.is_dir():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise MissingFileError(f"{path}: no ckpt_*.pt checkpoint in this folder; pass a run's checkpoints/ "
                               "folder or one ckpt_*.pt file")
    return found


if __name__ == "__main__":
    sys.exit(main())
