"""Bytes to batches: list image folders, read them with NVIDIA DALI, yield torch (images, labels) per rank.

Knows DALI and nothing of models; nothing outside this package imports DALI. ``import pipeline`` works
without DALI installed; constructing a ``DaliLoader`` then says how to install it.
"""

from .dali import IMAGENET_MEAN, IMAGENET_STD, DaliLoader
from .demo_data import ensure_digits_dataset
from .folder import FolderIndex, restrict, scan_folder
from .scan import BadFile, ScanReport, preflight, scan_tree

__all__ = [
    "BadFile", "DaliLoader", "FolderIndex", "IMAGENET_MEAN", "IMAGENET_STD", "ScanReport",
    "ensure_digits_dataset", "preflight", "restrict", "scan_folder", "scan_tree",
]
