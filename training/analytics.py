"""Sampling analytics: how often each class (optionally each image) lands among the rows a step trains on.

Per epoch, summed over processes, written to `<out_dir>/sampling.json`:
  seen[c]      images of class c in the batches (N per step)
  selected[c]  main rows whose base image has class c (UNIX: the k most uncertain; KD: all N)
  extra[c]     extra-view rows whose base image has class c (TL; for pick, the picked pool rows)
and the per-class accuracy of each evaluation. With `train.count_images=true`, per-image counts (main +
extra rows, by dataset index into the train file list) go to `<out_dir>/sampling_images/epoch-NNNN.npy`.
Counting is on the device (no host sync per step); one all-reduce per epoch. `launch.py report` draws it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .files import atomic_path, atomic_write_json

SAMPLING_FILE = "sampling.json"
IMAGES_DIR = "sampling_images"


class SamplingLog:
    def __init__(
        self, out_dir: Path, classes: list[str], device, *, write: bool, loader=None, count_images: bool = False
    ):
        self.out_dir, self.write_files, self.device = Path(out_dir), write, device
        self.C = len(classes)
        self.history = {"classes": list(classes), "epochs": [], "seen": [], "selected": [], "extra": [], "eval": []}
        self.loader = loader
        self.count_images = count_images
        if count_images and not hasattr(loader, "sample_order"):
            raise UserError("train.count_images=true needs a train loader that reports its sample order")
        self.images = torch.zeros(len(loader.index.files) if count_images else 0, dtype=torch.int32, device=device)
        self.epoch, self.batch, self.order = 0, 0, None
        self._zero()

    def _zero(self) -> None:
        self.counts = torch.zeros(3, self.C, dtype=torch.int64, device=self.device)  # seen, selected, extra
        self.steps = 0
        self.images.zero_()

    # --- during the epoch -----------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.batch = epoch, start_batch
        if self.count_images:
            # sync: once per epoch, a blocking host -> device copy of the epoch's sample order
            self.order = torch.as_tensor(np.asarray(self.loader.sample_order(epoch)), device=self.device)

    def observe(self, labels: torch.Tensor, sel) -> None:
        """One step's batch labels [N] and its Selection; device work only (no host sync)."""
        self._count(0, labels)
        self._count(1, labels[sel.index])
        if sel.extra_index is not None:
            self._count(2, labels[sel.extra_index])
        if self.count_images:
            N = labels.shape[0]
            ids = self.order[self.batch * N : (self.batch + 1) * N]
            rows = sel.index if sel.extra_index is None else torch.cat([sel.index, sel.extra_index])
            self.images.index_add_(0, ids[rows], torch.ones(rows.shape[0], dtype=torch.int32, device=self.device))
        self.batch += 1
        self.steps += 1

    def _count(self, row: int, labels: torch.Tensor) -> None:
        """counts[row][c] += number of `labels` equal to c.

        Not torch.bincount: on CUDA it reads max(labels) back to the host to size its output, a host-device
        sync every step even with minlength. Adding a one at each label's position gives the same counts.
        """
        self.counts[row].index_add_(0, labels, torch.ones_like(labels, dtype=self.counts.dtype))

    # --- at the end of an epoch (or of the run, mid-epoch) ---------------------------------------------
    @property
    def pending(self) -> bool:
        return self.steps > 0

    def end_epoch(self, accelerator) -> None:
        """Sum this epoch's counts over processes (every process calls it) and write them."""
        counts = accelerator.reduce(self.counts, reduction="sum").tolist()  # sync: once per epoch
        h = self.history
        if h["epochs"] and h["epochs"][-1] == self.epoch:  # the rest of an epoch begun before a resume
            for key, row in zip(("seen", "selected", "extra"), counts):
                h[key][-1] = [a + b for a, b in zip(h[key][-1], row)]
        else:
            h["epochs"].append(self.epoch)
            for key, row in zip(("seen", "selected", "extra"), counts):
                h[key].append(row)
        if self.count_images:
            images = accelerator.reduce(self.images, reduction="sum").cpu().numpy()  # sync: once per epoch
            if self.write_files:
                folder = self.out_dir / IMAGES_DIR
                folder.mkdir(exist_ok=True)
                path = folder / f"epoch-{self.epoch:04d}.npy"
                if path.exists():  # the rest of an epoch begun before a resume
                    images = images + np.load(path)
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.save(f, images.astype(np.uint16))
        self._zero()
        self.write()

    def record_eval(self, step: int, epoch: int, result: dict) -> dict:
        """Move the per-class counts out of an `evaluate` result into the history; return the rest."""
        result = dict(result)
        correct, total = result.pop("per_class_correct", None), result.pop("per_class_total", None)
        if correct is not None:
            self.history["eval"].append(
                {
                    "step": step,
                    "epoch": epoch,
                    "top1": result.get("top1"),
                    "per_class_correct": correct,
                    "per_class_total": total,
                }
            )
            self.write()
        return result

    def write(self) -> None:
        if not self.write_files:
            return
        atomic_write_json(self.out_dir / SAMPLING_FILE, self.history)

    # --- checkpoints: the history (main process) and this process's counts of the epoch so far ----------
    def state_dict(self) -> dict:
        return {
            "history": self.history if self.write_files else None,
            "counts": self.counts.tolist(),  # sync: at a checkpoint
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict | None) -> None:
        if not state:  # a checkpoint from before analytics existed
            return
        if state.get("history") is not None:
            self.history = state["history"]
        self.counts = torch.tensor(state["counts"], dtype=torch.int64, device=self.device)
        self.steps = state["steps"]


def load_sampling(out_dir: str | Path) -> dict:
    path = Path(out_dir) / SAMPLING_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found (written by runs of this version at the end of each epoch)")
    return json.loads(path.read_text())
