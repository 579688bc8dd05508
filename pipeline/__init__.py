"""Bytes to batches: list image folders (ImageNet-style, Tiny-ImageNet), read them with NVIDIA DALI, or hold
CIFAR arrays in memory (DALI external source or a device-resident tensor loader); yield torch (images, labels)
per rank.

Knows DALI and nothing of models; nothing outside this package imports DALI. ``import unixkd.pipeline`` does not
import DALI at all: it is imported when first needed (a ``DaliLoader`` or ``ArrayDaliLoader`` built, ``scan
--dali``), and without it that one-line ``DaliMissingError`` says how to install it.
"""

from .array_dali import ArrayDaliLoader
from .arrays import ImageArrays
from .cifar import read_cifar
from .dali import IMAGENET_LARGEST, IMAGENET_MEAN, IMAGENET_STD, DaliLoader, dali_import_error, dali_version
from .demo_data import ensure_digits_dataset
from .errors import DaliMissingError, DataError
from .folder import FolderIndex, restrict, scan_folder
from .scan import BadFile, BadImageError, ScanInterrupted, ScanReport, preflight, scan_tree
from .tensor_loader import TensorLoader
from .tinyimagenet import scan_tinyimagenet

__all__ = [
    "ArrayDaliLoader",
    "BadFile",
    "BadImageError",
    "DaliLoader",
    "DaliMissingError",
    "DataError",
    "FolderIndex",
    "IMAGENET_LARGEST",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageArrays",
    "ScanInterrupted",
    "ScanReport",
    "TensorLoader",
    "dali_import_error",
    "dali_version",
    "ensure_digits_dataset",
    "preflight",
    "read_cifar",
    "restrict",
    "scan_folder",
    "scan_tinyimagenet",
    "scan_tree",
]
