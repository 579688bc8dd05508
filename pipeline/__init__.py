"""Bytes to batches: list image folders, read them with NVIDIA DALI, yield torch (images, labels) per rank.

Knows DALI and nothing of models; nothing outside this package imports DALI. ``import pipeline`` works
without DALI installed; constructing a ``DaliLoader`` then says how to install it.
"""

from .dali import IMAGENET_MEAN, IMAGENET_STD, DaliLoader
from .demo_data import ensure_digits_dataset
from .folder import FolderIndex, scan_folder

__all__ = ["scan_folder", "FolderIndex", "DaliLoader", "ensure_digits_dataset", "IMAGENET_MEAN", "IMAGENET_STD"]
