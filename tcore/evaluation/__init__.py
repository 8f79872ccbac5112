"""Benchmark evaluation: the paper's DAVIS-2017 (J&F), JHMDB (PCK) and VIP (mIoU); YouTube-VOS and MOSE.

    >>> import tcore
    >>> summary = tcore.evaluate("davis", "data/DAVIS", model="tcore_vits16", out_dir="results/")
    >>> summary["scores"]        # {"J&F-Mean": ..., "J-Mean": ..., "F-Mean": ...} in percent
    >>> print(tcore.evaluation.format_table(summary))

Each benchmark runs the propagation front end with the paper's preset and the metrics of
`tcore.metrics`; the dataset readers take the official layouts. Also `tcore eval` on the command line.
"""
from .datasets import Dataset, DatasetError, Video, read_davis, read_jhmdb, read_vip
from .results import ManifestMismatchError, format_table
from .runner import evaluate, read_dataset, shard_videos
from .vos import read_mose, read_ytvos

__all__ = [
    "Dataset",
    "DatasetError",
    "ManifestMismatchError",
    "Video",
    "evaluate",
    "format_table",
    "read_dataset",
    "read_davis",
    "read_jhmdb",
    "read_mose",
    "read_vip",
    "read_ytvos",
    "shard_videos",
]
