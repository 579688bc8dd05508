"""Atomic, complete checkpoints: `<out_dir>/checkpoints/step-N/`.

A checkpoint is written into `step-N.tmp/` by every process (Accelerate's `save_state`: student, optimizer,
scaler, RNG states, registered objects; plus our `trainer_state_<rank>.json`: step, epoch, data position,
selector RNG, cost ledger), then renamed by the main process once all are done. A folder without `.tmp` is
therefore always complete; old ones are pruned only after the new one exists.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(accelerator, out_dir: str | Path, step: int, trainer_state: dict, keep: int) -> Path:
    """Write step-N atomically on all processes; returns the final folder."""
    root = checkpoint_root(out_dir)
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a run killed mid-save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    state_file = tmp / f"trainer_state_{accelerator.process_index}.json"
    state_file.write_text(json.dumps(trainer_state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved twice (e.g. epoch end == checkpoint_every)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(ckpt: Path, process_index: int) -> dict:
    path = ckpt / f"trainer_state_{process_index}.json"
    if not path.is_file():
        raise ValueError(f"checkpoint {ckpt} has no state for process {process_index} "
                         "(saved with fewer processes?)")
    return json.loads(path.read_text())


def resolve_resume(resume: str, out_dir: str | Path) -> Path | None:
    """`auto`: newest complete checkpoint in out_dir (None if there is none); `none`; or an explicit folder."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    path = Path(resume)
    if not (path.is_dir() and (path / "trainer_state_0.json").is_file()):
        raise ValueError(f"resume={resume}: not a complete checkpoint folder (expected {path}/trainer_state_0.json)")
    return path
