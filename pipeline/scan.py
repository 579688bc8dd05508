"""Find the files that would kill a DALI run at hour 30, before it starts.

DALI cannot skip a corrupt image mid-epoch (the pipeline is dead after the error), so two checks run up front:

* ``preflight(files)``: fast, every run — each file exists, is not empty, starts with JPEG or PNG magic bytes and
  ends like one: a JPEG's end-of-image marker ``FF D9`` or a PNG's ``IEND`` chunk within its last ``TAIL`` bytes.
  Reading both ends costs one extra seek per file. A file without the marker there is either truncated (a partial
  copy or download, the common case) or has data appended after a complete image (some cameras and phones write
  trailers, motion photos append a video); both PIL and DALI decode the latter fine, so such a file is decoded
  once with PIL to tell which — a full decode only for the rare files that need it.
* ``scan_tree(root)``: thorough — decodes every image once (PIL, in worker processes), and also reports
  corrupt files, files that are not images, class folders with no images and class folders that only one of
  train/ and val/ has.

  With ``dali=True`` (``scan --dali``) every file PIL reads is decoded once more with DALI's own CPU decoder, in
  worker processes that a crash cannot take down with the scan: PIL and DALI disagree on some broken files
  (libjpeg papers over a damaged Huffman-table marker that DALI refuses), and DALI 2.4 can *segfault* on such a
  file when it decodes it within a multi-threaded batch — a training run then dies without a message.

What none of them catches: damage inside the compressed data of a JPEG with intact head and tail. libjpeg (PIL)
and DALI's CPU decoder both decode such a file to garbage pixels without an error. What they do fail on (a broken
marker segment, a damaged PNG stream) stops DALI mid-epoch; the loader then names the file
(``DaliLoader`` → ``find_bad_file``) and raises ``BadImageError``.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .folder import SPLITS, compare_classes, layout_hint, list_folder

JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"  # SOI + a marker; the PNG signature
MAGIC = (JPEG_MAGIC, PNG_MAGIC)
JPEG_END, PNG_END = b"\xff\xd9", b"IEND\xaeB`\x82"  # EOI; the IEND chunk's type and CRC
# Bytes searched for the end marker. A truncated JPEG cannot have FF D9 there by accident (the compressed data
# stuffs every FF as FF 00), so the size only decides how much trailing padding skips the decode fallback.
TAIL = 1024
PROGRESS_EVERY = 50_000  # scan_tree: a progress line on stderr every this many images


class BadImageError(DataError):
    """An image DALI could not read, found mid-epoch: one line naming the file and how to get a clean list."""

    def __init__(self, message: str, path: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.path, self.problem = path, problem


class ScanInterrupted(Exception):
    """scan_tree stopped by Ctrl-C (or a handler that raises KeyboardInterrupt); the workers are gone."""

    def __init__(self, done: int, total: int):
        super().__init__(f"interrupted after {done} of {total} images")
        self.done, self.total = done, total


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
    class_mismatch: str | None = None  # train/ and val/ class folders differ: which (compare_classes)

    @property
    def clean(self) -> bool:
        return not self.bad and not self.empty_classes and self.class_mismatch is None

    @property
    def layout_ok(self) -> bool:
        """Training can start on this folder (with the clean list): no empty or unmatched class folders."""
        return not self.empty_classes and self.class_mismatch is None


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


def preflight_problem(path: str) -> str | None:
    """The pre-flight of one file: exists, not empty, JPEG/PNG magic at the start, its end marker at the end.

    One open, one read of each end (small files: one read). No end marker near the end: decoded with PIL, which
    tells a truncated file (reported) from a complete image with trailing data (fine).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return "empty"
            if size <= 2 * TAIL:
                head = tail = f.read()
            else:
                head = f.read(8)
                f.seek(-TAIL, os.SEEK_END)
                tail = f.read()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if head.startswith(JPEG_MAGIC):
        end = JPEG_END
    elif head.startswith(PNG_MAGIC):
        end = PNG_END
    else:
        return f"not an image (starts with {head[:4].hex()})"
    if tail.find(end, max(0, len(tail) - TAIL)) >= 0:
        return None
    return decode_problem(path)


def preflight(files: list[str], workers: int = 16) -> list[BadFile]:
    """``preflight_problem`` of every file, threaded (I/O bound); the bad ones in input order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(preflight_problem, files, chunksize=256))
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
        return "truncated" if "truncated" in str(e).lower() else f"corrupt ({_first_line(e, path)})"
    except Exception as e:  # noqa: BLE001 - PIL raises a zoo of types for broken files
        return f"corrupt ({type(e).__name__}: {_first_line(e, path)})"
    return None


def _first_line(err: Exception, path: str) -> str:
    """PIL's message, first line, without the path it repeats ("cannot identify image file '<path>'")."""
    text = str(err).splitlines()[0] if str(err) else ""
    return text.replace(f" {path!r}", "").replace(f" '{path}'", "")


_PATH_IN_MESSAGE = re.compile(r"(/[^\s'\"]+\.(?:jpe?g|png))\b", re.IGNORECASE)


def find_bad_file(candidates: list[str], message: str = "", workers: int = 8) -> BadFile | None:
    """Which of ``candidates`` (the files around a failed DALI batch) is broken.

    The file DALI's ``message`` names, if any (DALI names it for most decode and read errors); else the first
    candidate PIL cannot decode; None if PIL decodes them all (see ``DaliLoader`` for the DALI re-check).
    """
    named = [p for p in candidates if p in message] or [p for p in _PATH_IN_MESSAGE.findall(message)]
    if named:
        path = named[0]
        return BadFile(path, decode_problem(path) or "DALI cannot decode it (PIL can)")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, problem in zip(candidates, pool.map(decode_problem, candidates)):
            if problem is not None:
                return BadFile(path, problem)
    return None


def _quiet_worker() -> None:
    # Ctrl-C in a terminal reaches every process of the group: the parent alone handles it (and terminates us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent may have a handler; Pool.terminate sends SIGTERM


def scan_tree(
    root: str | Path, workers: int | None = None, *, dali: bool = False, progress_every: int = PROGRESS_EVERY, log=None
) -> ScanReport:
    """Decode every image under ``root/<split>/<class>/`` (splits: the subfolders of root; Tiny-ImageNet's
    layout when ``root/wnids.txt`` exists) with PIL, and with ``dali`` the ones PIL reads once more with DALI.
    Progress goes to ``log`` (stderr) every ``progress_every`` images.

    Ctrl-C (KeyboardInterrupt) stops the workers and raises ``ScanInterrupted``: nothing half-done is returned.
    """
    log = log or sys.stderr
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"scan: no such folder: {root}")
    report = ScanReport(root=str(root))
    images = _list_tiny(root) if (root / "wnids.txt").is_file() else _list_folders(root, report)
    if not images:
        raise DataError(f"scan: no images under {root} (expected {root}/<split>/<class>/<image>){layout_hint(root)}")
    workers = workers or os.cpu_count() or 1
    if len(images) >= progress_every:
        print(f"scan: decoding {len(images)} images with {workers} processes", file=log, flush=True)
    done, t0 = 0, time.perf_counter()
    try:
        with multiprocessing.Pool(workers, initializer=_quiet_worker) as pool:  # exit: terminate()
            paths = (os.path.join(root, rel) for rel in images)
            for rel, problem in zip(images, pool.imap(decode_problem, paths, chunksize=64)):
                if problem is None:
                    report.good.append(rel)
                else:
                    report.bad.append(BadFile(rel, problem))
                done += 1
                if done % progress_every == 0:
                    rate = done / (time.perf_counter() - t0)
                    print(
                        f"scan: {done}/{len(images)} images ({100 * done / len(images):.0f}%, {rate:.0f}/s, "
                        f"~{(len(images) - done) / rate / 60:.0f} min left)",
                        file=log,
                        flush=True,
                    )
    except KeyboardInterrupt:
        raise ScanInterrupted(done, len(images)) from None
    if dali and report.good:
        rejected = dali_problems(
            [os.path.join(root, rel) for rel in report.good], workers, progress_every=progress_every, log=log
        )
        report.bad += [BadFile(report.good[i], problem) for i, problem in sorted(rejected.items())]
        report.good = [rel for i, rel in enumerate(report.good) if i not in rejected]
    return report


def dali_reason(message: str) -> str:
    """The line of a DALI error that says what went wrong (after its traceback of the pipeline definition)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    after = lines.index("encountered:") + 1 if "encountered:" in lines else 0
    for line in lines[after:]:
        if not line.startswith(("Critical error", "Current pipeline", "C++ context")):
            return line[:200]
    return lines[0][:200] if lines else "no message"


def dali_problems(paths: list[str], workers: int, *, progress_every: int = PROGRESS_EVERY, log=None) -> dict[int, str]:
    """DALI's CPU decoder over ``paths``, one file at a time: {index: problem} for the files it rejects or crashes on.

    Each worker process takes a contiguous share and publishes the index it is decoding before it decodes it, so a
    worker killed by a signal (DALI segfaulting on a file) names that file; a fresh worker resumes after it.
    """
    from .dali import require_dali  # here: dali.py imports this module

    require_dali("scan --dali", "install it (pip install nvidia-dali-cuda130), or scan without --dali")
    log = log or sys.stderr
    ctx = multiprocessing.get_context("fork")  # the children need no imports of their own; nothing runs threads
    results = ctx.SimpleQueue()
    bounds = [len(paths) * k // workers for k in range(workers + 1)]
    shares = [(lo, hi, ctx.Value("q", lo - 1)) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]

    def start(lo: int, hi: int, at):
        proc = ctx.Process(target=_dali_worker, args=(paths, lo, hi, at, results), daemon=True)
        proc.start()
        return proc

    running = {k: start(lo, hi, at) for k, (lo, hi, at) in enumerate(shares)}
    problems: dict[int, str] = {}
    if len(paths) >= progress_every:
        print(f"scan: decoding {len(paths)} images again with DALI ({len(shares)} processes)", file=log, flush=True)
    reported = 0
    try:
        while running:
            for k, proc in list(running.items()):
                proc.join(timeout=0.05)
                if proc.exitcode is None:
                    continue
                del running[k]
                lo, hi, at = shares[k]
                if proc.exitcode != 0:  # died on the file it had announced
                    crashed = at.value
                    if crashed < lo:
                        raise RuntimeError(f"scan --dali: a DALI worker died before decoding (exit {proc.exitcode})")
                    how = f"signal {-proc.exitcode}" if proc.exitcode < 0 else f"exit {proc.exitcode}"
                    problems[crashed] = f"crashes DALI's decoder ({how})"
                    if crashed + 1 < hi:
                        running[k] = start(crashed + 1, hi, at)
            while not results.empty():
                index, problem = results.get()
                problems[index] = problem
            done = sum(at.value - lo + 1 for lo, _, at in shares)
            if done // progress_every > reported:
                reported = done // progress_every
                print(f"scan: DALI {done}/{len(paths)} images", file=log, flush=True)
    except KeyboardInterrupt:
        for proc in running.values():
            proc.terminate()
        raise ScanInterrupted(sum(at.value - lo + 1 for lo, _, at in shares), len(paths)) from None
    while not results.empty():
        index, problem = results.get()
        problems[index] = problem
    return problems


def _dali_worker(paths: list[str], lo: int, hi: int, at, results) -> None:
    """Decode ``paths[lo:hi]`` with DALI's CPU decoder, one a run; ``at`` holds the index being decoded."""
    _quiet_worker()
    import numpy as np
    from nvidia.dali import Pipeline, fn, types

    def build():
        pipe = Pipeline(
            batch_size=1, num_threads=1, device_id=None, exec_async=False, exec_pipelined=False, prefetch_queue_depth=1
        )
        with pipe:
            data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
            pipe.set_outputs(fn.decoders.image(data, device="cpu", output_type=types.RGB))
        pipe.build()
        return pipe

    pipe = build()
    for i in range(lo, hi):
        at.value = i
        try:
            data = np.fromfile(paths[i], dtype=np.uint8)
        except OSError as e:
            results.put((i, f"unreadable ({e.strerror})"))
            continue
        try:
            pipe.feed_input("data", [data])
            pipe.run()
        except RuntimeError as e:
            results.put((i, f"DALI cannot decode it: {dali_reason(str(e))}"))
            pipe = build()  # a pipeline is dead after an error
    at.value = hi - 1


def _list_folders(root: Path, report: ScanReport) -> list[str]:
    """Image paths relative to root of ``<root>/<split>/<class>/<image>``; fills the report's layout findings."""
    images: list[str] = []
    classes: dict[str, list[str]] = {}
    for split in list_folder(root).folders:
        classes[split] = list_folder(root / split).folders
        for cls in classes[split]:
            listing = list_folder(root / split / cls)
            images += [f"{split}/{cls}/{name}" for name in listing.images]
            report.ignored += [f"{split}/{cls}/{name}" for name in listing.others]
            report.bad += [BadFile(f"{split}/{cls}/{name}", "missing (broken symlink)") for name in listing.broken]
            if not listing.images:
                report.empty_classes.append(f"{split}/{cls}")
    if all(s in classes for s in SPLITS):
        report.class_mismatch = compare_classes(classes["train"], classes["val"])
    return images


def _list_tiny(root: Path) -> list[str]:
    """Tiny-ImageNet: the files the trainer reads (``scan_tinyimagenet``), relative to root."""
    from .tinyimagenet import scan_tinyimagenet

    return [os.path.relpath(f, root) for split in SPLITS for f in scan_tinyimagenet(root, split).files]


__all__ = [
    "BadFile",
    "BadImageError",
    "ScanInterrupted",
    "ScanReport",
    "dali_problems",
    "dali_reason",
    "decode_problem",
    "find_bad_file",
    "header_problem",
    "preflight",
    "preflight_problem",
    "scan_tree",
]
