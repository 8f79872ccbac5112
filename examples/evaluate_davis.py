"""Evaluate a backbone on DAVIS-2017 val with the paper's protocol and print the table.

    python examples/evaluate_davis.py DAVIS_ROOT [--model M] [--out RESULTS_DIR] [--size H W]

DAVIS_ROOT holds JPEGImages/480p, Annotations/480p and ImageSets/2017/val.txt. Results (masks, CSV,
summary.json) go to RESULTS_DIR; a second run resumes. `--size` overrides the paper's 480x880 working
size (a quick look, not the paper's protocol).
"""
import argparse

import tcore
from tcore.evaluation import format_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--model", default=None, help="default: T-CoRe ViT-S/16 (Kinetics-400)")
    p.add_argument("--out", default="results/davis-example")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="working size (default: the paper's 480x880)")
    args = p.parse_args()
    summary = tcore.evaluate("davis", args.root, model=args.model, out_dir=args.out,
                             size=tuple(args.size) if args.size else None)
    print(format_table(summary))


if __name__ == "__main__":
    main()
