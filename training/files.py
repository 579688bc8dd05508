"""Files this program writes: whole or not at all.

Every file is written to a temporary name beside its destination and renamed over it (`os.replace`, atomic
on POSIX within one filesystem), so a reader — a resumed run, `report`, a user's script — sees the old file
or the new one, never half of one, whatever kills the writer. The one exception is an append-only log
(`metrics.jsonl`): each row is one `write` of a whole line, and readers tolerate a partial last line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any error it is removed.

    For writers that want a path rather than bytes (`np.save`, `fig.savefig`): write to the yielded path.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the data reaches the disk before the name points at it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj, **dump_kwargs) -> None:
    atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """`fig.savefig`, atomically; the format comes from `path`'s suffix (the temporary name has none)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    return path


def check_writable_file(path: str | Path, what: str, example: str = "clean.txt") -> Path:
    """Before expensive work: `path` can be created or replaced as a file (not a folder, parent exists and is
    writable). Raises a one-line UserError naming `what` (e.g. '--write-clean-list')."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {path}: is a folder; give a file name (e.g. {p / example})")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{what} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{what} {path}: not writable")
    return p


def check_output_folder(path: str | Path, what: str) -> Path:
    """Before expensive work: `path` is a folder or can be made one (it is not a file). One-line UserError."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {path}: is a file, not a folder; give a folder for the results")
    return p


def keep_previous(path: str | Path) -> Path | None:
    """A result file about to be replaced moves aside, beside it, as `<name>.<UTC time><suffix>`: a measurement
    written earlier is never lost to a rerun into the same place. Returns where it went (None: nothing there)."""
    p = Path(path)
    if not p.is_file():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(p.stat().st_mtime))
    target, n = p.with_name(f"{p.stem}.{stamp}{p.suffix}"), 1
    while target.exists():  # two results within one second
        target, n = p.with_name(f"{p.stem}.{stamp}-{n}{p.suffix}"), n + 1
    os.replace(p, target)
    return target
