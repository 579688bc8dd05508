"""The embedded demo dataset: scikit-learn's 1,797 handwritten digits written out as an ImageNet-style folder.

The digits ship inside scikit-learn (8×8 images, no download), so the main job runs on a fresh machine.
Layout: ``<root>/train/<0..9>/<i>.jpg``, ``<root>/val/<0..9>/<i>.jpg`` (``i`` = index in
``load_digits()``) and ``<root>/MANIFEST.json`` listing every file with its byte size. The folder is
built next to ``root`` and renamed into place, so a half-written dataset is never at ``root``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError

VERSION = 1  # bump when the way images are made changes: older folders are rebuilt
MANIFEST = "MANIFEST.json"
OWN_ENTRIES = {"train", "val", MANIFEST}  # what may be replaced at root, under our manifest
SOURCE = "sklearn.datasets.load_digits"  # the manifest's mark: this folder was built here


def ensure_digits_dataset(root: str | Path, *, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Return ``root`` holding the digits dataset, building it (or rebuilding a damaged one) first."""
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    root = Path(root).expanduser().resolve()
    recipe = {"version": VERSION, "image_size": image_size, "val_fraction": val_fraction, "seed": seed}

    problem = _problem(root, recipe)
    if problem is None:
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        _check_ours(root)  # only a folder this function built may be replaced
        print(f"demo data at {root}: {problem}; rebuilding")
    else:
        print(f"demo data: building scikit-learn digits ({image_size}px) at {root}")
    _build(root, recipe)
    return root


def _check_ours(root: Path) -> None:
    """Refuse (one line) unless ``root`` holds only what this module writes, under a manifest it wrote."""
    if not root.is_dir():
        raise DataError(f"data.root={root} is a file, not a folder; point it at an empty or new folder")
    why = None
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        if not isinstance(manifest, dict) or manifest.get("source") != SOURCE:
            why = f"its {MANIFEST} was not written by unixkd's demo set"
    except FileNotFoundError:
        why = f"no {MANIFEST} from unixkd's demo set"
    except (OSError, ValueError):
        why = f"its {MANIFEST} is unreadable (remove the folder to rebuild the demo set there)"
    stray = sorted(p.name for p in root.iterdir() if p.name not in OWN_ENTRIES)
    if why is None and stray:
        why = f"it holds other files ({', '.join(stray[:3])})"
    if why is not None:
        raise DataError(
            f"data.root={root} is not the demo set: {why}. Not overwriting it with demo data: to "
            "train on this folder set data.dataset=folder, or point data.root at an empty or new folder"
        )


def _problem(root: Path, recipe: dict) -> str | None:
    """Why ``root`` is not a complete dataset made with ``recipe``; None if it is."""
    if not root.is_dir():
        return "missing"
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} unreadable ({type(err).__name__})"
    for key, value in recipe.items():
        if manifest.get(key) != value:
            return f"built with {key}={manifest.get(key)!r}, wanted {value!r}"
    for rel, size in files.items():
        try:
            actual = (root / rel).stat().st_size
        except OSError:
            return f"file missing: {rel}"
        if actual != size:
            return f"file damaged: {rel} has {actual} bytes, manifest says {size}"
    return None


def _build(root: Path, recipe: dict) -> None:
    from sklearn.datasets import load_digits  # imported here: only building needs scikit-learn

    digits = load_digits()  # images: (1797, 8, 8) floats in 0..16; target: 0..9
    is_val = _stratified_val_mask(digits.target, recipe["val_fraction"], recipe["seed"])

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    size = recipe["image_size"]
    files: dict[str, int] = {}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        rel = f"{'val' if is_val[i] else 'train'}/{label}/{i}.jpg"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        gray = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8))  # 0..16 → 0..255
        gray.resize((size, size), Image.Resampling.BICUBIC).convert("RGB").save(tmp / rel, quality=95)
        files[rel] = (tmp / rel).stat().st_size
    counts = {"train": int((~is_val).sum()), "val": int(is_val.sum()), "total": len(files)}
    manifest = {**recipe, "source": SOURCE, "counts": counts, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))

    old = root.parent / f".{root.name}.old-{os.getpid()}"
    if root.exists():
        root.rename(old)  # a directory cannot be renamed over a non-empty one: move the old one aside
    try:
        tmp.rename(root)
    except OSError:  # another process put a dataset at root first: keep theirs if it is whole
        shutil.rmtree(tmp, ignore_errors=True)
        if _problem(root, recipe) is not None:
            raise
    shutil.rmtree(old, ignore_errors=True)


def _stratified_val_mask(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """True for the images that go to val: ``round(val_fraction * n_c)`` of each class, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        is_val[rng.permutation(members)[: round(val_fraction * len(members))]] = True
    return is_val
