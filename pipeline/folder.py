"""List an ImageNet-style folder (``<root>/<split>/<class>/<image>``) into files, labels and classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared lower-case: .JPEG and .PNG count too


@dataclass
class FolderIndex:
    """Every image of one split: ``files[i]`` has label ``labels[i]``, the index of its class in ``classes``."""

    files: list[str]  # absolute paths, sorted by (class, file name)
    labels: list[int]
    classes: list[str]  # sorted class folder names; label = position here

    def __len__(self) -> int:
        return len(self.files)


def scan_folder(root: str | Path, split: str) -> FolderIndex:
    """Index ``<root>/<split>/<class>/*.{jpg,jpeg,png}`` (any case); a missing or empty split is a ValueError."""
    split_dir = Path(root).expanduser().resolve() / split
    if not split_dir.is_dir():
        raise ValueError(f"image folder not found: {split_dir}")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image>)")

    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        images = sorted(
            p.name
            for p in (split_dir / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        files += [str(split_dir / name / image) for image in images]
        labels += [label] * len(images)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {split_dir}")
    return FolderIndex(files=files, labels=labels, classes=classes)


def restrict(index: FolderIndex, keep: set[str]) -> FolderIndex:
    """The files of ``index`` whose absolute path is in ``keep``; classes (and so labels) stay as they were."""
    pairs = [(f, y) for f, y in zip(index.files, index.labels) if f in keep]
    return FolderIndex(files=[f for f, _ in pairs], labels=[y for _, y in pairs], classes=index.classes)
