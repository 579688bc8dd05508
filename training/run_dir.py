"""One out_dir, one run: what a run keeps there, who may write there now, and what a new run may replace.

* **A lock.** The main process holds an exclusive `fcntl.flock` on `<out_dir>/.lock` for the run's whole life.
  The OS frees it when the process ends, however it ends (SIGKILL included), so there is no stale lock to
  clean up; a second run on the same out_dir is refused with one line naming the holder.
* **Refuse, never clobber.** A new run (`resume=none`) in an out_dir that holds another run's files is refused,
  with the ways out: resume it, pick another out_dir, or `overwrite=true`, which moves the old run's files into
  a sibling `<out_dir>.old-<time>/` — nothing is deleted. `resume=auto` in an out_dir without a complete
  checkpoint starts over only if the run there is the same job (the same resolved config.yaml): a job requeued
  before its first checkpoint.
* **The record follows the checkpoint.** When a run resumes at step s, `metrics.jsonl` keeps the rows up to s
  and drops those of the steps it is about to redo (and a partial last line); `config.yaml` is written only
  after every resume check passed; `status.json` says whether the run is running, finished, preempted,
  stopped or failed (read by `launch.py status`, e.g. in a SLURM script).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

import yaml

from . import checkpoint as ckpt
from .config import Config, to_dict
from .errors import UserError
from .files import atomic_write_json, atomic_write_text

LOCK = ".lock"
CONFIG, METRICS, STATUS = "config.yaml", "metrics.jsonl", "status.json"
# Everything a run writes into its out_dir (what overwrite=true moves aside; anything else is left alone)
RUN_FILES = (
    ckpt.checkpoint_root("").name,
    METRICS,
    "final",
    "final.tmp",
    "sampling.json",
    "sampling_images",
    CONFIG,
    "report",
    STATUS,
    "trackers",
    "wallclock.json",  # a wall-clock budget's calibration (training/wallclock.py)
    "compare_run.json",  # compare's record of a finished run (training/compare.py)
)
# Keys that may differ between a job and its restart: how to resume or watch it, not what to train
RESTART_KEYS = ("resume", "resume_force", "overwrite", "train.progress", "train.log_with", "train.tracker_project")


class OutDirLock:
    """An exclusive advisory lock on `<out_dir>/.lock`, with who holds it written inside for the error."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(
                f"out_dir={self.path.parent} is in use by another run ({holder}); wait for it to "
                "end, or pick another out_dir"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_is_free(out: Path) -> bool:
    """True if no process holds out_dir's lock now (a run that says "running" then was killed)."""
    try:
        fd = os.open(out / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def claim(cfg: Config) -> tuple[OutDirLock, list[str]]:
    """Main process, before any work: create out_dir, check it is writable, lock it, and check that this run
    may use it (moving an old run aside with overwrite=true). Returns the lock and lines to print."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"out_dir={out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"out_dir={out}: not writable ({e.strerror})") from None
    lock = OutDirLock(out)
    lock.acquire()
    try:
        return lock, _check_owner(cfg, out)
    except BaseException:
        lock.release()
        raise


def _check_owner(cfg: Config, out: Path) -> list[str]:
    used = [name for name in RUN_FILES if (out / name).exists()]
    if not used:
        return []
    if cfg.overwrite:
        return [f"overwrite=true: moved the previous run's files ({', '.join(used)}) to {move_aside(out, used)}"]
    if cfg.resume == "auto":
        if ckpt.list_checkpoints(out):
            return []  # resume it (the checkpoint is verified and its fingerprint checked later)
        differs = _config_differences(out / CONFIG, cfg)
        if not differs:
            return [f"out_dir={out} holds this job without a complete checkpoint: starting it over"]
        why = f"a run without a complete checkpoint whose config differs ({differs})"
    elif cfg.resume != "none" and _inside(Path(cfg.resume), out):
        return []  # resume one of this out_dir's own checkpoints (find_resume checks which)
    else:
        why = "another run (" + ", ".join(used) + ")"
    raise UserError(
        f"out_dir={out} holds {why}: resume it with resume=auto, pick another out_dir, or set "
        "overwrite=true to move its files aside (nothing is deleted)"
    )


def move_aside(out: Path, names: list[str]) -> Path:
    """Move `names` from out into a new sibling folder `<out>.old-<time>[-n]`; returns that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        dest = out.parent / f"{out.name}.old-{stamp}{'' if n == 0 else f'-{n}'}"
        try:
            dest.mkdir()
            break
        except FileExistsError:
            continue
    for name in names:
        (out / name).rename(dest / name)  # same filesystem: a rename, nothing copied or deleted
    return dest


def _config_differences(saved: Path, cfg: Config) -> str:
    """'' if the config.yaml at `saved` describes the same job as `cfg`, else the first differences."""
    if not saved.is_file():
        return "no config.yaml"
    try:
        old = _flat(yaml.safe_load(saved.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return "config.yaml unreadable"
    new = _flat(to_dict(cfg))
    keys = [k for k in sorted(old.keys() | new.keys()) if k not in RESTART_KEYS and old.get(k) != new.get(k)]
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3])
    return shown + (f", and {len(keys) - 3} more" if len(keys) > 3 else "")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.expanduser().resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


# ---- the record ---------------------------------------------------------------------------------------


def truncate_metrics(out: Path, step: int) -> int:
    """Keep the rows of metrics.jsonl up to `step` (the checkpoint a run resumes from; 0 for a start over);
    returns how many rows were dropped (rows of steps about to be redone, a final summary at `step` that the
    resumed run writes again, and a partial last line)."""
    path = out / METRICS
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a kill
            dropped += 1
            continue
        redone = row.get("step", 0) > step or (row.get("final") and row.get("step") == step)  # a final: rewritten
        if isinstance(row, dict) and not redone:
            kept.append(line if line.endswith("\n") else line + "\n")
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(kept))
    return dropped


class MetricsLog:
    """`<out_dir>/metrics.jsonl`: one JSON object per logged step or evaluation; main process only.

    Append-only: each row is one write of a whole line, flushed, so a kill leaves at most a partial last line,
    which readers skip and a resume removes. `mirror(row)` gets each row once it is written (the trackers)."""

    def __init__(self, path: Path, enabled: bool, mirror=None):
        self.path, self.enabled, self.mirror = path, enabled, mirror

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if self.mirror is not None:
                self.mirror(row)


def write_status(out: Path, state: str, **fields) -> None:
    """`status.json`: running | finished | preempted | stopped | failed, with the step, checkpoint and message."""
    info = {
        "state": state,
        **fields,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    atomic_write_json(out / STATUS, info, indent=1)


def read_status(out: Path) -> dict:
    path = Path(out) / STATUS
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found (not a run folder, or the run never started)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
