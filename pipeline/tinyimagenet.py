"""List Tiny-ImageNet (200 classes, 64×64 JPEGs) in its distributed folder layout as FolderIndex splits.

    <root>/wnids.txt                          the 200 class ids (WordNet ids), one a line
    <root>/train/<wnid>/images/*.JPEG         500 training images per class
    <root>/val/images/*.JPEG                  10,000 validation images, labels in
    <root>/val/val_annotations.txt            "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per line

Labels are positions in the sorted class ids (the order ``scan_folder`` and torchvision's ImageFolder use).
The unlabelled ``test/`` split is not read. The DALI file reader then reads these lists like any folder.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .folder import IMAGE_EXTENSIONS, FolderIndex


def scan_tinyimagenet(root: str | Path, split: str) -> FolderIndex:
    """Index the ``train`` or ``val`` split; any missing or inconsistent piece is a one-line ValueError."""
    if split not in ("train", "val"):
        raise ValueError(f"Tiny-ImageNet split must be 'train' or 'val', got {split!r}")
    root = Path(root).expanduser().resolve()
    classes = read_wnids(root)
    label_of = {wnid: i for i, wnid in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    if split == "train":
        for wnid in classes:
            folder = root / "train" / wnid / "images"
            if not folder.is_dir():
                raise DataError(f"Tiny-ImageNet: {folder} missing (class {wnid} is listed in wnids.txt)")
            names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not names:
                raise DataError(f"Tiny-ImageNet: no images in {folder}")
            files += [str(folder / n) for n in names]
            labels += [label_of[wnid]] * len(names)
    else:
        annotations = root / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise DataError(f"Tiny-ImageNet: {annotations} missing (the val labels)")
        rows = []
        for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in label_of:
                raise DataError(
                    f"{annotations}:{line_no}: expected '<file>\\t<wnid>\\t...' with a wnid from "
                    f"wnids.txt, got {line.strip()[:60]!r}"
                )
            path = root / "val" / "images" / fields[0]
            if not path.is_file():
                raise DataError(f"{annotations}:{line_no}: {path} not found")
            rows.append((fields[0], label_of[fields[1]]))
        if not rows:
            raise DataError(f"{annotations} lists no images")
        rows.sort()
        files = [str(root / "val" / "images" / name) for name, _ in rows]
        labels = [label for _, label in rows]
    return FolderIndex(files=files, labels=labels, classes=classes, root=str(root))


def read_wnids(root: Path) -> list[str]:
    """The class ids listed in ``wnids.txt``, sorted."""
    path = root / "wnids.txt"
    if not path.is_file():
        raise DataError(f"data.root={root}: no wnids.txt (expected the Tiny-ImageNet folder: wnids.txt, train/, val/)")
    wnids = [w.strip() for w in path.read_text().splitlines() if w.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: expected distinct class ids, one a line")
    return sorted(wnids)
