"""Propagate a first-frame mask through a video and save the masks and an overlay.

    python examples/propagate_video.py VIDEO FIRST_MASK OUT_DIR [--model M] [--size H W] [--threshold T]

VIDEO is a frame folder or a video file; FIRST_MASK a palette PNG, grey ids or RGB colours.
Frames are decoded and masks written as a stream, so memory does not grow with the video.
"""
import argparse
from pathlib import Path

import tcore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("first_mask")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--model", default=None, help="default: T-CoRe ViT-S/16 (Kinetics-400)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--threshold", type=float, default=None)
    args = p.parse_args()

    frames = tcore.read_video(args.video)
    _, palette = tcore.read_mask(args.first_mask, threshold=args.threshold)
    stream = tcore.propagate_masks(frames, args.first_mask, model=args.model, threshold=args.threshold,
                                   size=tuple(args.size) if args.size else None, stream=True)
    masks = (mask for _, mask in stream)
    written = tcore.write_masks(args.out_dir / "masks", masks, palette=palette, names=frames.names)
    masks_again = (tcore.read_mask(path)[0] for path in written)  # read back: nothing is kept in memory
    overlay = tcore.write_overlay(args.out_dir / "overlay.gif", frames, masks_again, palette=palette,
                                  fps=frames.fps or 10)
    print(f"{len(written)} masks in {args.out_dir / 'masks'}, overlay {overlay}")


if __name__ == "__main__":
    main()
