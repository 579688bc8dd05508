"""List an ImageNet-style folder (``<root>/<split>/<class>/<image>``) into files, labels and classes.

Listing uses ``os.scandir`` (the file type comes with the directory entry: no stat per file, which matters for
1.28M files on a network filesystem). Hidden entries (``.DS_Store``, macOS ``._x.jpg`` resource forks) are
skipped; symlinked class folders and files are followed. A layout that would silently change the classes — an
empty class folder, a root that is a split folder itself — is a one-line ValueError.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared lower-case: .JPEG and .PNG count too
SPLITS = ("train", "val")
SHOW = 5  # names shown in a one-line message


@dataclass
class FolderIndex:
    """Every image of one split: ``files[i]`` has label ``labels[i]``, the index of its class in ``classes``."""

    files: list[str]  # absolute paths, sorted by (class, file name)
    labels: list[int]
    classes: list[str]  # sorted class folder names; label = position here
    root: str | None = None  # the dataset root the split was listed from (for messages)

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class Listing:
    """One folder's visible entries, by kind (names, sorted)."""

    folders: list[str]
    images: list[str]
    others: list[str]  # files the loader does not read (other extensions)
    broken: list[str]  # symlinks whose target is gone


def list_folder(folder: str | Path) -> Listing:
    """The non-hidden entries of ``folder``: sub-folders, images (by extension, any case), other files, dead links."""
    folders, images, others, broken = [], [], [], []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():  # follows symlinks
                folders.append(e.name)
            elif e.is_file():
                (images if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS else others).append(e.name)
            elif e.is_symlink():
                broken.append(e.name)
    return Listing(sorted(folders), sorted(images), sorted(others), sorted(broken))


def names(items: list[str], show: int = SHOW) -> str:
    """``a, b, c, ...`` — the first ``show`` of ``items``, for a one-line message."""
    return ", ".join(items[:show]) + (", ..." if len(items) > show else "")


def layout_hint(root: Path) -> str:
    """Why ``root`` may not be a dataset root (``<root>/<split>/<class>/<image>``): '' or ' — ...' for a message."""
    try:
        top = list_folder(root)
    except OSError:
        return ""
    if top.images:
        return (
            f" — {root} holds {len(top.images)} image(s) directly ({names(top.images, 2)}); "
            f"expected {root}/train/<class>/<image>"
        )
    looks_like_split = root.name in SPLITS
    for sub in top.folders[:3]:  # class folders with images in them: root is a split folder
        with contextlib.suppress(OSError):
            looks_like_split = looks_like_split or bool(list_folder(root / sub).images)
    if looks_like_split:
        return (
            f" — {root} looks like a split folder itself (<class>/<image>); did you mean the parent folder "
            f"{root.parent}?"
        )
    if top.folders:
        return f" ({root} holds {names([f + '/' for f in top.folders])})"
    return ""


def compare_classes(train: list[str], val: list[str]) -> str | None:
    """None if both splits have the same class folders, else which are missing where, with counts."""
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if not only_train and not only_val:
        return None
    parts = [
        f"{len(only)} only in {split}/ ({names(only)})"
        for split, only in (("train", only_train), ("val", only_val))
        if only
    ]
    return f"val/ and train/ have different class folders ({len(train)} in train/, {len(val)} in val/): " + ", ".join(
        parts
    )


def scan_folder(root: str | Path, split: str) -> FolderIndex:
    """Index ``<root>/<split>/<class>/*.{jpg,jpeg,png}`` (any case).

    A missing split, a split without class folders, or a class folder without images is a one-line ValueError:
    an empty class folder would still be a class (a label, an output of the model's head) that no image has.
    """
    root = Path(root).expanduser().resolve()
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"image folder not found: {split_dir}{layout_hint(root)}")
    top = list_folder(split_dir)
    classes = top.folders
    if not classes:
        loose = f"; it holds {len(top.images)} image(s) directly" if top.images else ""
        raise DataError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image>{loose})")

    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    others: list[str] = []  # in the empty class folders: what is there instead
    for label, name in enumerate(classes):
        listing = list_folder(split_dir / name)
        if not listing.images:
            empty.append(name)
            others += [f"{name}/{o}" for o in listing.others + listing.folders]
        files += [str(split_dir / name / image) for image in listing.images]
        labels += [label] * len(listing.images)
    if not files:
        raise DataError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {split_dir}"
            + (f" (found {names(others, 2)})" if others else "")
        )
    if empty:
        instead = f"; they hold {names(others, 2)}, not {'/'.join(IMAGE_EXTENSIONS)}" if others else ""
        raise DataError(
            f"{split_dir}: {len(empty)} of {len(classes)} class folder(s) have no images "
            f"({names(empty)}){instead}; each would still be a class of the model's head "
            f"({len(classes)} outputs, not {len(classes) - len(empty)}): add images or remove the folder(s)"
        )
    return FolderIndex(files=files, labels=labels, classes=classes, root=str(root))


def restrict(index: FolderIndex, keep: set[str]) -> FolderIndex:
    """The files of ``index`` whose absolute path is in ``keep``; classes (and so labels) stay as they were."""
    pairs = [(f, y) for f, y in zip(index.files, index.labels) if f in keep]
    return FolderIndex(
        files=[f for f, _ in pairs], labels=[y for _, y in pairs], classes=index.classes, root=index.root
    )
