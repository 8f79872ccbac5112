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

from training.checkpoint import export_teacher, latest_checkpoint, load_checkpoint

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a ckpt_*.pt file, or a run's checkpoints/ folder (its latest)")
    parser.add_argument("-o", "--output", required=True, help="folder to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = Path(args.checkpoint)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no ckpt_*.pt checkpoint in this folder")
        path = found
    folder, pth = export_teacher(load_checkpoint(path), args.output)
    print(f"{folder}/model.safetensors + config.json\n{pth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
