"""T-CoRe pretraining recipe (runs from a clone with torchrun; not part of the `tcore` wheel).

    torchrun --nproc-per-node=4 training/pretrain.py --config training/configs/vits16_k400.yaml \
        data.root=/data/k400/frames

See training/README.md.
"""
