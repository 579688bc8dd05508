"""Read CIFAR-10 / CIFAR-100 in their standard python format into memory (no download, ever).

CIFAR-100: ``cifar-100-python/{train,test,meta}``; CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5,
test_batch,batches.meta}``. Each file is a pickle holding ``data`` (uint8 [n, 3072], the R, G and B planes of
each 32×32 image in turn) and ``labels`` / ``fine_labels``. ``root`` may be that folder or the folder above
it. The files are pickles: read only datasets you trust (the same holds for torchvision's reader).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .arrays import ImageArrays
from .errors import DataError

CIFAR100_MEAN = (0.5071, 0.4866, 0.4409)  # the UNIX authors' values
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

LAYOUTS = {  # folder, train files, test files, meta file, label key, class-names key
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
    ),
}
STATS = {"cifar100": (CIFAR100_MEAN, CIFAR100_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD)}


def cifar_folder(root: str | Path, name: str) -> Path:
    """The folder holding the pickles: ``root/<cifar folder>`` if it exists, else ``root`` itself."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; known: {', '.join(LAYOUTS)}")
    folder, train_files, _, meta, *_ = LAYOUTS[name]
    root = Path(root).expanduser()
    for candidate in (root / folder, root):
        if (candidate / meta).is_file() and (candidate / train_files[0]).is_file():
            return candidate
    raise DataError(
        f"data.root={root}: no {name} files here (expected {root}/{folder}/{meta} and "
        f"{train_files[0]}, the python version of the dataset)"
    )


def read_cifar(root: str | Path, name: str, split: str) -> ImageArrays:
    """All images of ``split`` ("train" or "test") as uint8 [n, 3, 32, 32], with int64 labels and class names."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = cifar_folder(root, name)
    _, train_files, test_files, meta_file, label_key, names_key = LAYOUTS[name]
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in _load(folder / meta_file)[names_key]]
    images, labels = [], []
    for file in train_files if split == "train" else test_files:
        entry = _load(folder / file)
        try:
            data = np.asarray(entry["data"], dtype=np.uint8)
            lab = np.asarray(entry[label_key], dtype=np.int64)
        except KeyError as e:
            raise DataError(f"{folder / file}: no '{e.args[0]}' entry; not a {name} python-format file") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(lab) != len(data):
            raise DataError(
                f"{folder / file}: data {data.shape} and {len(lab)} labels; expected [n, 3072] and n labels"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    arrays = ImageArrays(images=np.concatenate(images), labels=np.concatenate(labels), classes=classes)
    if arrays.labels.min() < 0 or arrays.labels.max() >= len(classes):
        raise DataError(f"{folder}: labels outside 0..{len(classes) - 1} in the {split} split")
    return arrays


def _load(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"CIFAR file missing: {path}")
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")  # written by Python 2: byte strings as latin-1
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(e).__name__})") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a readable CIFAR pickle (holds a {type(entry).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
