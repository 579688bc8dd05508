"""Processes that wait for each other, with deadlines: the Accelerator, the two collective timeouts, and work
that the main process does alone while the others wait for its verdict.

Two deadlines (`train.step_timeout_min`, `train.setup_timeout_min`):
* the step's collectives (DDP's gradient all-reduce, metrics, the preemption agreement, evaluation) run on
  the default process group, whose timeout is short: a peer that hangs or dies mid-run ends the job within
  minutes, not torch's default half hour;
* what legitimately keeps the processes apart for long — the main process's pre-flight of a large dataset,
  building the demo set, verifying a checkpoint before a resume, writing one — synchronises on a second
  group with the long timeout (`wait_long`, `on_main`).

On gloo (CPU) a timeout raises in the waiting process (`guards.is_collective_timeout`); on NCCL, torch's
watchdog aborts the process with its own message. Either way the launcher then stops the other ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from . import trackers

T = TypeVar("T")
_long_groups: dict[float, object] = {}  # one process group per long timeout, made once per process


def make_accelerator(cfg, run: bool = False) -> Accelerator:
    """The run's Accelerator: CPU (gloo) where there is no GPU, the step's collective timeout set.

    `run=True` (train() only; eval, bench and profile log nowhere): with the trackers of `train.log_with`, each
    package checked first (a missing one is a ConfigError naming it), writing under `<out_dir>/trackers/`. They
    are this instance's, so several runs in one process (compare, the demo's teacher) each log to their own.
    """
    # cpu=True off-GPU so that `accelerate launch --multi_gpu` also runs (over gloo) on CPU machines.
    # No AutocastKwargs handler, on purpose: with one, every `accelerator.autocast()` (three per step) runs
    # `AutocastKwargs.to_kwargs()`, which empties and refills os.environ, racing DALI's decoder threads that
    # call getenv (a segfault, seen in tests). The CUDA-graph captures clear the autocast cache instead.
    timeout = InitProcessGroupKwargs(timeout=timedelta(minutes=cfg.train.step_timeout_min))
    names = trackers.resolve(cfg) if run else []  # before anything is made: a missing package is one line
    logging = {"log_with": names, "project_config": trackers.project_config(cfg)} if names else {}
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision, kwargs_handlers=[timeout], **logging
    )
    trackers.check_made(accelerator, names)
    accelerator.long_timeout_min = cfg.train.setup_timeout_min  # read by wait_long / on_main
    if accelerator.num_processes > 1:
        _long_group(accelerator)  # every process creates it here, in the same order (new_group is collective)
    return accelerator


def _long_group(accelerator: Accelerator):
    minutes = getattr(accelerator, "long_timeout_min", None)
    if minutes is None or accelerator.num_processes == 1:
        return None  # an Accelerator made elsewhere (tests, tools): the default group
    if minutes not in _long_groups:
        _long_groups[minutes] = dist.new_group(timeout=timedelta(minutes=minutes))
    return _long_groups[minutes]


def wait_long(accelerator: Accelerator) -> None:
    """A barrier with the long timeout (around checkpoint saves and main-process-only setup)."""
    if accelerator.num_processes > 1:
        group = _long_group(accelerator)
        if group is None:
            accelerator.wait_for_everyone()
        elif dist.get_backend(group) == "nccl":
            dist.barrier(group=group, device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier(group=group)


def on_main(accelerator: Accelerator, fn: Callable[[], T]) -> T:
    """Run `fn` on the main process only; every process returns its result, or raises its exception.

    For checks and setup that only the main process should do (it owns out_dir, it reads the files once):
    without this, a refusal on the main process would leave the others waiting at their next collective.
    """
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - handed to every process, raised there as here
            error = e
    if accelerator.num_processes > 1:
        box = [result, error]
        group = _long_group(accelerator)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None
        dist.broadcast_object_list(box, src=0, group=group, device=device)
        result, error = box
    if error is not None:
        if not accelerator.is_main_process:
            error.relayed_from_main = True  # launch.py prints it once, on the main process
        raise error
    return result
