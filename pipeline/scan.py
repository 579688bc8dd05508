"""Find the files that would kill a DALI run at hour 30, before it starts.

DALI cannot skip a corrupt JPEG mid-epoch, so two checks run up front:
* ``preflight(files)``: fast — every file exists, is not empty, and starts with JPEG or PNG magic bytes.
* ``scan_tree(root)``: thorough — decodes every image once (PIL, in worker processes), and also reports
  truncated files, files that are not images, and class folders with no images.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .folder import IMAGE_EXTENSIONS

MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG (SOI + marker), PNG signature


@dataclass
class BadFile:
    path: str
    problem: str  # missing | empty | not an image (...) | truncated | corrupt (...)


@dataclass
class ScanReport:
    root: str
    good: list[str] = field(default_factory=list)  # paths relative to root
    bad: list[BadFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)  # "<split>/<class>"
    ignored: list[str] = field(default_factory=list)  # non-image files the loader skips anyway

    @property
    def clean(self) -> bool:
        return not self.bad and not self.empty_classes


def header_problem(path: str) -> str | None:
    """What is wrong with the file's existence, size or first bytes; None if it looks like a JPEG/PNG."""
    try:
        size = os.stat(path).st_size
        if size == 0:
            return "empty"
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not any(head.startswith(m) for m in MAGIC):
        return f"not an image (starts with {head[:4].hex()})"
    return None


def preflight(files: list[str], workers: int = 16) -> list[BadFile]:
    """Header check of every file, threaded (I/O bound); the bad ones in input order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(header_problem, files, chunksize=256))
    return [BadFile(f, p) for f, p in zip(files, problems) if p is not None]


def decode_problem(path: str) -> str | None:
    """Header check, then a full decode with PIL: truncated and corrupt files are caught here."""
    problem = header_problem(path)
    if problem is not None:
        return problem
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except OSError as e:
        return "truncated" if "truncated" in str(e).lower() else f"corrupt ({str(e).splitlines()[0]})"
    except Exception as e:  # noqa: BLE001 - PIL raises a zoo of types for broken files
        return f"corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def scan_tree(root: str | Path, workers: int | None = None) -> ScanReport:
    """Decode every image under ``root/<split>/<class>/`` (splits: the subfolders of root)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"scan: no such folder: {root}")
    report = ScanReport(root=str(root))
    images: list[Path] = []
    for split in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for cls in sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found = 0
            for f in sorted(cls.iterdir()):
                if not f.is_file() or f.name.startswith("."):
                    continue
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    images.append(f)
                    found += 1
                else:
                    report.ignored.append(str(f.relative_to(root)))
            if not found:
                report.empty_classes.append(f"{split.name}/{cls.name}")
    if not images:
        raise ValueError(f"scan: no images under {root} (expected {root}/<split>/<class>/<image>)")
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        problems = list(pool.map(decode_problem, [str(p) for p in images], chunksize=64))
    for path, problem in zip(images, problems):
        if problem is None:
            report.good.append(str(path.relative_to(root)))
        else:
            report.bad.append(BadFile(str(path.relative_to(root)), problem))
    return report
