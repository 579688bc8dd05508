"""Atomic, complete, verified checkpoints: `<out_dir>/checkpoints/step-N/`.

A checkpoint is written into `step-N.tmp/` by every process (Accelerate's `save_state`: student, optimizer,
scaler, RNG states, registered objects; plus our `trainer_state_<rank>.json`: step, epoch, data position,
selector RNG, cost ledger). When all are done the main process writes `MANIFEST.json` (every file's size and
SHA-256) and renames the folder. So a folder without `.tmp` was complete when written, and the manifest
tells whether it still is: a resume verifies it first and falls back to the newest intact checkpoint, saying
which and why. Old checkpoints are pruned only after the new one exists.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

from .distributed import on_main, wait_long
from .errors import UserError
from .files import atomic_write_json
from .guards import CheckpointWriteError

STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "MANIFEST.json"
MODEL_FILE = "model.safetensors"  # Accelerate's save_state: the (first) model's weights


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (renamed from .tmp), oldest first; not yet verified."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


# ---- writing ------------------------------------------------------------------------------------------


def save_checkpoint(accelerator, out_dir: str | Path, step: int, trainer_state: dict, keep: int) -> Path:
    """Write step-N atomically on all processes; returns the final folder.

    A failure to write (disk full, permissions) on any process is a CheckpointWriteError on every process,
    with the half-written folder removed and the previous checkpoints untouched.
    """
    root = checkpoint_root(out_dir)
    final, tmp = root / f"step-{step}", root / f"step-{step}.tmp"

    def fresh_tmp() -> None:
        shutil.rmtree(tmp, ignore_errors=True)  # our own leftover of a run killed mid-save
        tmp.mkdir(parents=True)

    try:
        on_main(accelerator, fresh_tmp)
        error = None
        try:
            accelerator.save_state(str(tmp))
            atomic_write_json(tmp / f"trainer_state_{accelerator.process_index}.json", trainer_state)
        except OSError as e:
            error = e
        wait_long(accelerator)
        errors = _gather_errors(accelerator, error)
        if errors:
            raise errors[0]
        on_main(accelerator, lambda: _publish(tmp, final, out_dir, keep))
    except OSError as e:
        on_main(accelerator, lambda: shutil.rmtree(tmp, ignore_errors=True))
        previous = latest_checkpoint(out_dir)
        raise CheckpointWriteError(
            f"checkpoint step-{step} could not be written to {root} "
            f"({e.strerror or e}); the previous checkpoint is intact: "
            f"{previous or 'none'}"
        ) from None
    return final


def _gather_errors(accelerator, error: OSError | None) -> list[OSError]:
    """Every process's save error (None where it succeeded), known to all, so all fail together."""
    if accelerator.num_processes == 1:
        return [error] if error else []
    from accelerate.utils import gather_object

    return [e for e in gather_object([error]) if e is not None]


def _publish(tmp: Path, final: Path, out_dir, keep: int) -> None:
    """Main process: manifest, rename into place, then prune the oldest beyond `keep`."""
    files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}}
    atomic_write_json(tmp / MANIFEST, manifest, indent=1)
    if final.exists():  # the same step saved twice (e.g. epoch end == checkpoint_every): ours, replaced
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def save_final(accelerator, student, out_dir: str | Path) -> Path:
    """The student's weights in `<out_dir>/final/` (Accelerate's `save_model`), swapped in whole: written to
    `final.tmp/`, then renamed over the previous `final/` of this run."""
    out = Path(out_dir)
    final, tmp = out / "final", out / "final.tmp"
    on_main(accelerator, lambda: (shutil.rmtree(tmp, ignore_errors=True), tmp.mkdir()))
    accelerator.save_model(student, str(tmp))
    wait_long(accelerator)

    def swap() -> None:
        if final.exists():
            old = out / "final.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)  # this run's own earlier weights (a resumed finished run): replaced, then removed
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)

    on_main(accelerator, swap)
    return final


# ---- reading ------------------------------------------------------------------------------------------


def checkpoint_problem(ckpt: Path, world_size: int | None = None) -> str | None:
    """Why `ckpt` cannot be trusted (a file missing, truncated or changed since it was saved); None if it is
    whole. A checkpoint saved before manifests existed is checked for its files only."""
    manifest_path = ckpt / MANIFEST
    if manifest_path.is_file():
        try:
            listed = json.loads(manifest_path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{MANIFEST} unreadable"
        for rel, want in listed.items():
            path = ckpt / rel
            if not path.is_file():
                return f"{rel} missing"
            size = path.stat().st_size
            if size != want["bytes"]:
                return f"{rel} has {size} bytes, {want['bytes']} when saved"
            if _sha256(path) != want["sha256"]:
                return f"{rel} changed since it was saved (checksum differs)"
    for rel in ("trainer_state_0.json", MODEL_FILE):
        if not (ckpt / rel).is_file():
            return f"{rel} missing"
    if world_size is not None:
        saved = len(list(ckpt.glob("trainer_state_*.json")))
        if saved != world_size:
            return f"saved by {saved} process(es), this run has {world_size}"
    return None


def load_trainer_state(ckpt: Path, process_index: int) -> dict:
    path = ckpt / f"trainer_state_{process_index}.json"
    if not path.is_file():
        raise UserError(f"checkpoint {ckpt} has no state for process {process_index} (saved with fewer processes?)")
    return json.loads(path.read_text())


def find_resume(resume: str, out_dir: str | Path, world_size: int) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from and the lines to print about it (main process; nothing is loaded).

    `none`: None. `auto`: the newest intact checkpoint in out_dir (None if there is none); damaged newer ones
    are passed over, each with a line saying why. A path: that folder, which must be intact.
    """
    if resume == "none":
        return None, []
    if resume != "auto":
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise UserError(f"resume={resume}: no such checkpoint folder")
        run = path if list_checkpoints(path) else path.parent if list_checkpoints(path.parent) else None
        if run is not None and (run == path or path.name == "checkpoints"):  # a run's folder, or its checkpoints/
            raise UserError(
                f"resume={resume}: a run's folder, not one checkpoint; use resume=auto with "
                f"out_dir={run}, or name one of its checkpoints/step-N folders"
            )
        problem = checkpoint_problem(path, world_size)
        if problem:
            raise UserError(f"resume={resume}: cannot resume from this checkpoint: {problem}")
        return path, []
    notes = []
    for ckpt in reversed(list_checkpoints(out_dir)):
        problem = checkpoint_problem(ckpt, world_size)
        if problem is None:
            if notes:
                notes.append(f"resuming from {ckpt.name}, the newest intact checkpoint")
            return ckpt, notes
        notes.append(f"checkpoint {ckpt} is not usable: {problem}; trying an older one")
    if notes:
        raise UserError(f"resume=auto: no usable checkpoint in {checkpoint_root(out_dir)} ({'; '.join(notes)})")
    return None, []


def set_aside_after(out_dir: str | Path, step: int) -> tuple[Path | None, list[str]]:
    """Move the checkpoints newer than `step` (the one a run resumes from), and the `final/` weights that came
    after them, into `checkpoints/superseded-<time>/`.

    They belong to a future the resumed run abandons (an explicit resume of an older checkpoint, or damaged
    ones passed over): left in place, the resumed run's pruning would keep them as the "newest" and a later
    resume=auto would continue the abandoned run. Moved, not deleted."""
    newer = [p for p in list_checkpoints(out_dir) if int(STEP_DIR.match(p.name).group(1)) > step]
    if not newer:
        return None, []
    dest = checkpoint_root(out_dir) / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('~')[0]}~{n}")
    dest.mkdir()
    final = Path(out_dir) / "final"
    if final.is_dir():  # the weights that future ended on (a final is written after the last checkpoint)
        newer.append(final)
    for p in newer:
        p.rename(dest / p.name)
    return dest, [p.name for p in newer]


def saved_model_shapes(ckpt: Path) -> dict[str, tuple]:
    """Name -> shape of the student's tensors in a checkpoint, read from the safetensors header only."""
    from safetensors import safe_open

    with safe_open(str(ckpt / MODEL_FILE), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
