"""What `bench` and `profile` share: the run to time, its batches, the clock, and the record of the machine.

The run is `training.trainer.build_run`'s, so the step timed is the training step. Timing never depends on
the teacher's weights, so a teacher checkpoint that is not there is replaced by random weights (and the
record says so); synthetic batches need no dataset.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ..build import Run, build_run
from ..config import Config, ConfigError, load_config

DATA_MODES = ("synthetic", "pipeline", "both")


def load_timing_config(path: str, overrides: list[str], data_mode: str) -> Config:
    """The config as `train` reads it, except that what timing does not need may be left empty.

    An empty `model.teacher_checkpoint` means random teacher weights; an empty `data.root` is allowed with
    --data synthetic (the classes then come from `model.num_classes`).
    """
    if data_mode not in DATA_MODES:
        raise ConfigError(f"--data {data_mode}: must be one of {', '.join(DATA_MODES)}")
    return load_config(path, overrides, need_data_root=data_mode != "synthetic", need_teacher_weights=False)


def teacher_weights(cfg: Config) -> str:
    """Where the timed teacher's weights come from (a missing checkpoint: random weights)."""
    if cfg.selection.method == "none":
        return "no teacher"
    if cfg.model.pretrained_teacher:
        return "timm pretrained"
    ckpt = cfg.model.teacher_checkpoint
    return ckpt if ckpt and Path(ckpt).exists() else "random (no checkpoint file)"  # a file or a folder


def build_timed_run(cfg: Config, accelerator, num_classes: int, steps_per_epoch: int = 1000) -> Run:
    """`build_run` for timing: the same models, optimizer, selector and step, random teacher if no file."""
    c = copy.deepcopy(cfg)
    if teacher_weights(cfg).startswith("random"):
        c.model.teacher_checkpoint = ""
    run = build_run(c, accelerator, num_classes, steps_per_epoch)
    run.student.train()
    return run


def timing_data(cfg: Config, accelerator, modes: list[str]):
    """The dataset's loaders when a mode reads it; for synthetic only, None, or (no `model.num_classes`) a `Data`
    with the dataset's classes and no loaders: synthetic batches never need DALI."""
    if modes == ["synthetic"] and cfg.model.num_classes:
        return None
    if modes == ["synthetic"] and cfg.data.dataset != "digits" and not cfg.data.root:
        raise ConfigError(
            "config key 'model.num_classes' must be set (e.g. 1000) for synthetic batches "
            "without a dataset (data.root is empty)"
        )
    from ..data import Data, build_data, dataset_classes

    if modes == ["synthetic"]:
        return Data(train=None, val=None, classes=dataset_classes(cfg, accelerator), root=Path(cfg.data.root))
    return build_data(cfg, accelerator)


def synthetic_batch(cfg: Config, num_classes: int, device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of N random normalized images and labels, resident on the training device, in the dtype and
    memory format the loaders would hand over (so synthetic and pipeline steps run the same kernels)."""
    from ..data import output_dtype

    g = torch.Generator().manual_seed(seed)
    N, S = cfg.data.batch_size, cfg.data.image_size
    images = torch.randn(N, 3, S, S, generator=g)
    labels = torch.randint(0, num_classes, (N,), generator=g)
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    images = images.to(device, dtype=getattr(torch, output_dtype(cfg, device)), memory_format=layout)
    return images, labels.to(device)


def endless(loader) -> Iterator:
    """Batches of a per-epoch loader, epoch after epoch (DaliLoader: set_epoch before each pass)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


class Clock:
    """Wall-clock on the host (perf_counter). `now(sync=True)` first waits for the device to finish."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def now(self, sync: bool = True) -> float:
        if sync and self.cuda:
            torch.cuda.synchronize()  # sync: the device's queued work belongs to the phase that queued it
        return time.perf_counter()


class EventClock:
    """Device time of back-to-back regions: CUDA events (no host sync per region) on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.pairs: list = []

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, start) -> int:
        """Close a region; returns its index into `ms()`."""
        end = self.start()
        self.pairs.append((start, end))
        return len(self.pairs) - 1

    def ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()  # sync: once, after every region was queued
            return [a.elapsed_time(b) for a, b in self.pairs]
        return [(b - a) * 1e3 for a, b in self.pairs]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# MFU's denominator: dense (no 2:4 sparsity) bf16/fp16 tensor-core peak FLOP/s, by a substring of the CUDA
# device name (SXM parts' datasheet numbers). Matched in this order; unlisted devices get no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: torch.device, mixed_precision: str) -> dict:
    """{"flops_per_s": the peak MFU divides by, or None; "basis": what it is}. Only for bf16/fp16 on CUDA:
    fp32 runs elsewhere than the tensor cores' half-precision path, and a CPU has no figure here. The
    environment's UNIXKD_PEAK_FLOPS (FLOP/s; UNIXKD_PEAK_BASIS says how it was measured) replaces the table for
    bf16/fp16 on any device: benchmarks/gpu_session.sh sets it to the bf16 matmul peak measured on the machine."""
    device = torch.device(device)
    measured = os.environ.get("UNIXKD_PEAK_FLOPS")  # benchmarks/gpu_session.sh: the peak it measured here
    if measured and mixed_precision in ("bf16", "fp16"):
        basis = os.environ.get("UNIXKD_PEAK_BASIS") or "UNIXKD_PEAK_FLOPS"
        return {"flops_per_s": float(measured), "basis": f"measured: {basis}, {float(measured) / 1e12:.0f} TFLOP/s"}
    if device.type != "cuda":
        return {"flops_per_s": None, "basis": f"no peak for a {device.type} device"}
    name = torch.cuda.get_device_name(device)
    if mixed_precision not in ("bf16", "fp16"):
        return {"flops_per_s": None, "basis": f"no peak for mixed_precision={mixed_precision} on {name}"}
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return {
                "flops_per_s": flops,
                "basis": f"{key} dense {mixed_precision} tensor-core peak, {flops / 1e12:.0f} TFLOP/s ({name})",
            }
    return {"flops_per_s": None, "basis": f"{name} is not in the peak table (training/measure/timing.py PEAK_FLOPS)"}


def mfu(flops: float | None, ms: float | None, peak: dict) -> float | None:
    """Model FLOP utilisation: `flops` done in `ms` milliseconds over the peak; None without a peak or a time."""
    if not flops or not ms or peak["flops_per_s"] is None:
        return None
    return flops / (ms / 1e3) / peak["flops_per_s"]


def environment(device: torch.device) -> dict:
    """The record every result file carries: machine, device, library versions, git commit."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {
        "device": name,
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or platform.machine())


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name, dist in [("torchvision", "torchvision"), ("timm", "timm"), ("accelerate", "accelerate")]:
        try:
            out[name] = md.version(dist)
        except md.PackageNotFoundError:
            out[name] = None
    from unixkd.pipeline import (
        dali_version,  # the DALI that imports here, if any (nothing outside pipeline/ imports it)
    )

    out["dali"] = dali_version()
    out["cuda"] = torch.version.cuda
    return out


def _git_commit() -> str | None:
    """HEAD of the checkout this code runs from, with '-dirty' if tracked files (results aside) differ from it."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)benchmarks/results",
            ],  # earlier results being rewritten is no change
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
