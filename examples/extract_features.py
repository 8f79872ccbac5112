"""Extract T-CoRe patch features of a frame and show them: the first three principal components of
the patch tokens as an RGB picture (similar parts of the scene get similar colours).

    python examples/extract_features.py IMAGE OUT.png [--model M] [--size H W]

For a whole video (colours fitted once, stable over time): `tcore features VIDEO -o pca.mp4`.
"""
import argparse

import numpy as np
from PIL import Image

import tcore
from tcore.pictures import fit_pca, pca_colours
from tcore.devices import resolve_device
from tcore.propagation.encoder import FrameEncoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("out")
    p.add_argument("--model", default=None, help="default: T-CoRe ViT-S/16 (Kinetics-400)")
    p.add_argument("--size", type=int, nargs=2, default=(480, 880), metavar=("H", "W"))
    args = p.parse_args()

    device = resolve_device()
    model = tcore.load_backbone(args.model, device=device)
    frame = np.asarray(Image.open(args.image).convert("RGB"))
    size = tuple(s // model.patch_size * model.patch_size for s in args.size)
    feats = FrameEncoder(model, size, device)([frame])[0]  # (h, w, D), L2-normalised
    colours = pca_colours(feats, fit_pca(feats))  # (h, w, 3) uint8
    picture = Image.fromarray(colours).resize((frame.shape[1], frame.shape[0]), Image.NEAREST)
    Image.fromarray(np.concatenate([frame, np.asarray(picture)], axis=1)).save(args.out)
    print(f"features {tuple(feats.shape)} -> {args.out}")


if __name__ == "__main__":
    main()
