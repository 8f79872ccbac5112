"""Propagate masks through a video and save the masks and an overlay.

    python examples/propagate_video.py VIDEO MASKS OUT_DIR [--model M] [--size H W] [--threshold T]
    python examples/propagate_video.py VIDEO MASK_0 OUT_DIR --at 35 MASK_35   # objects that enter later

VIDEO is a frame folder or a video file; MASKS the first frame's mask (a palette PNG, grey ids or
RGB colours) or a folder of masks named like the frames; `--at T MASK` gives a mask at frame T.
Frames are decoded and masks written as a stream, so memory does not grow with the video.
"""
import argparse
from pathlib import Path

import tcore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("masks")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--model", default=None, help="default: T-CoRe ViT-S/16 (Kinetics-400)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--at", nargs=2, action="append", default=[], metavar=("T", "MASK"),
                   help="a mask given at frame T (repeatable); MASKS is then frame 0's")
    args = p.parse_args()

    frames = tcore.read_video(args.video)
    masks = {0: args.masks, **{int(t): m for t, m in args.at}} if args.at else args.masks
    stream = tcore.iter_masks(frames, masks, model=args.model, threshold=args.threshold,
                              size=tuple(args.size) if args.size else None)
    palette = stream.palette
    written = tcore.write_masks(args.out_dir / "masks", stream, palette=palette, names=frames.names)
    masks_again = (tcore.read_mask(path)[0] for path in written)  # read back: nothing is kept in memory
    overlay = tcore.write_overlay(args.out_dir / "overlay.gif", frames, masks_again, palette=palette,
                                  fps=frames.fps or 10)
    print(f"{len(written)} masks in {args.out_dir / 'masks'}, overlay {overlay}")


if __name__ == "__main__":
    main()
