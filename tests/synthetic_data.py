"""Small files in the real datasets' formats, written by the tests: CIFAR python pickles and a Tiny-ImageNet tree."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar(
    root: Path, name: str = "cifar100", n_train: int = 200, n_test: int = 60, seed: int = 0, bytes_keys: bool = False
) -> dict:
    """Write ``root/<cifar folder>/...`` like the python version of CIFAR; return the arrays written (data rows)."""
    rng = np.random.default_rng(seed)
    n_classes = 100 if name == "cifar100" else 10
    train = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    y_train = rng.integers(0, n_classes, n_train).tolist()
    y_test = rng.integers(0, n_classes, n_test).tolist()
    names = [f"class{i:03d}" for i in range(n_classes)]
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)  # bytes keys: how Python 2 pickles load raw

    def dump(path: Path, entry: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            pickle.dump({key(k): v for k, v in entry.items()}, f, protocol=2)

    if name == "cifar100":
        folder = root / "cifar-100-python"
        dump(folder / "train", {"data": train, "fine_labels": y_train, "coarse_labels": [0] * n_train})
        dump(folder / "test", {"data": test, "fine_labels": y_test, "coarse_labels": [0] * n_test})
        dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["c"]})
    else:
        folder = root / "cifar-10-batches-py"
        parts = np.array_split(np.arange(n_train), 5)
        for i, part in enumerate(parts, start=1):
            dump(folder / f"data_batch_{i}", {"data": train[part], "labels": [y_train[j] for j in part]})
        dump(folder / "test_batch", {"data": test, "labels": y_test})
        dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": len(parts[0])})
    return {"train": train, "test": test, "y_train": y_train, "y_test": y_test, "names": names, "folder": folder}


def write_tinyimagenet(
    root: Path, wnids=("n03", "n01", "n02"), n_train: int = 3, n_val: int = 2, seed: int = 0
) -> dict:
    """A Tiny-ImageNet tree: wnids.txt (in the given, unsorted order), train/<wnid>/images, val/images + annotations.

    Images are 64×64 noise saved as high-quality JPEGs (what matters is that DALI decodes them).
    Returns {"val": [(file name, wnid), ...]}.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)

    for wnid in wnids:
        for i in range(n_train):
            image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val = []
    for j in range(n_val * len(wnids)):
        wnid = wnids[j % len(wnids)]
        image(root / "val" / "images" / f"val_{j}.JPEG")
        val.append((f"val_{j}.JPEG", wnid))
    (root / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in val))
    return {"val": val}
