"""`bench`: each selector's training step on the same models, interleaved (A B C A B C ...), timed side by side.

Every selector steps one shared run from `build_run` (the same student, teacher, optimizer and `DistillStep`;
only the selector differs), so what is timed is exactly the training step. Rounds of one step per selector
(and per data mode, with --data both) spread machine drift (other jobs, clocks, heat) over all of them
equally; medians ignore the odd stall.

* synthetic: one random batch resident on the training device, stepped again and again: compute alone.
  Timed with CUDA events per step on a GPU (no host sync in between), perf_counter on a CPU.
* pipeline: the configured dataset through this project's loader (DALI); each iteration is the wait for the
  next batch plus the step, wall-clock with a device sync after each. The loader alone is timed after.
* peer "timm": the obvious alternative in the same run: timm's own `timm.task.LogitDistillationTask` on the
  same teacher/student pair (KD on all N), fed by a torchvision ImageFolder DataLoader, timed the same way.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor

from .config import Config, ConfigError, to_dict
from .cost import CostLedger
from .step import StepCounts
from .timing import (Clock, EventClock, build_timed_run, endless, environment, median, synthetic_batch,
                     teacher_weights, timing_data)
from .trainer import make_accelerator, make_selector

PEERS = ("timm",)


@dataclass
class Runner:
    """One thing being timed: a step (images, labels) -> StepCounts in one data mode, and its records."""

    mode: str  # synthetic | pipeline
    name: str
    step: Callable[[Tensor, Tensor], StepCounts]
    ledger: CostLedger
    batches: Iterator | None = None  # pipeline mode: where its batches come from
    step_ms: list[float] = field(default_factory=list)
    data_wait_ms: list[float] = field(default_factory=list)


def bench(cfg: Config, *, selectors: list[str], steps: int = 20, warmup: int = 3, data: str = "synthetic",
          peer: str | None = None, note: str = "", accelerator=None) -> dict:
    """Time `selectors` (and the peer) on `cfg`'s pair; returns the result record (see benchmarks/README.md)."""
    from selection import SELECTORS

    bad = [s for s in selectors if s not in SELECTORS]
    if not selectors or bad:
        raise ConfigError(f"--selectors: unknown selector(s) {bad or selectors}; allowed: {', '.join(SELECTORS)}")
    if cfg.selection.method == "none":
        raise ConfigError("bench times distillation steps; selection.method=none trains without a teacher")
    if peer is not None and peer not in PEERS:
        raise ConfigError(f"--peer {peer}: must be one of {', '.join(PEERS)}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    accelerator = accelerator or make_accelerator(cfg)
    if accelerator.num_processes > 1:
        raise ValueError("bench runs on one process; start it with python, not accelerate launch --multi_gpu")
    device, N = accelerator.device, cfg.data.batch_size
    modes = ["synthetic", "pipeline"] if data == "both" else [data]
    if peer is not None and "pipeline" in modes and cfg.data.dataset.startswith("cifar"):
        raise ConfigError(f"--peer {peer} with --data {data} reads an image folder (ImageFolder); "
                          f"data.dataset={cfg.data.dataset} is arrays: use --data synthetic")
    loaders = timing_data(cfg, accelerator, modes)
    num_classes = cfg.model.num_classes or len(loaders.classes)
    run = build_timed_run(cfg, accelerator, num_classes)
    costs = dict(Ft=run.ledger.Ft, Fs=run.ledger.Fs, Bs=run.ledger.Bs)

    steps_by_name = {}
    for name in selectors:
        step = copy.copy(run.step)  # the same models, optimizer and phases; its own selector
        step.selector = make_selector(cfg, accelerator, name, run.ledger)  # budget mode included
        steps_by_name[name] = lambda x, y, step=step: step(x, y)[1]
    peer_step = None
    if peer == "timm":
        peer_step = TimmPeer(cfg, run.teacher, num_classes, accelerator)
        steps_by_name[peer_step.name] = peer_step
    ours = peer_batches = None  # pipeline mode: this project's loader (DALI), and the peer's
    if "pipeline" in modes:
        ours = endless(loaders.train)
        peer_batches = peer_step.batches() if peer_step is not None else None
    runners = [Runner(mode, name, fn, CostLedger(**costs),
                      batches=None if mode == "synthetic" else peer_batches if fn is peer_step else ours)
               for mode in modes for name, fn in steps_by_name.items()]

    images = labels = None
    if "synthetic" in modes:
        images, labels = synthetic_batch(cfg, num_classes, device, seed=cfg.seed)
    _time_interleaved(runners, images, labels, steps, warmup, device)
    data_alone = []
    if ours is not None:
        name = f"{type(loaders.train).__name__} (this project's loader)"
        data_alone.append(_time_loader(name, ours, steps, warmup, N, device))
    if peer_batches is not None:
        data_alone.append(_time_loader(peer_step.loader_name, peer_batches, steps, warmup, N, device))

    return {
        "kind": "unixkd bench",
        "environment": environment(device),
        "note": note,
        "args": {"selectors": selectors, "steps": steps, "warmup": warmup, "data": data, "peer": peer},
        "timing": ("interleaved over selectors and modes, warm-up rounds first. synthetic: " +
                   ("CUDA events around each step, one sync at the end; " if device.type == "cuda" else
                    "time.perf_counter around each step; ") +
                   "pipeline: perf_counter around data wait + step, device synced after each step; "
                   "img/s = N / median step time. data alone: after the steps, batches back to back, "
                   "img/s = N x batches / total time"),
        "teacher_weights": teacher_weights(cfg),
        "num_classes": num_classes,
        "flops_per_image": costs,
        "peer": peer_step.description if peer_step is not None else None,
        "rows": _rows(runners, N, steps),
        "data_alone": data_alone,
        "config": to_dict(cfg),
    }


# --------------------------------------------------------------------------------------------------------
# the timing loops


def _add(ledger: CostLedger, n: StepCounts) -> None:
    ledger.add_step(batch=n.batch, teacher=n.teacher, student_fwd=n.student_fwd, student_bwd=n.student_bwd)


def _time_interleaved(runners: list[Runner], images: Tensor, labels: Tensor, steps: int, warmup: int,
                      device) -> None:
    """Rounds of one step per runner (A B C A B C ...); the first `warmup` rounds are not recorded."""
    events, clock = EventClock(device), Clock(device)
    regions: dict[int, list[int]] = {id(r): [] for r in runners}
    for i in range(warmup + steps):
        for r in runners:
            if r.mode == "synthetic":  # the resident batch: compute alone
                start = events.start()
                n = r.step(images, labels)
                j = events.stop(start)
                if i >= warmup:
                    regions[id(r)].append(j)
            else:  # wait for the next batch, then the step
                t0 = clock.now()
                x, y = next(r.batches)
                t1 = clock.now(sync=False)  # host time spent waiting for the batch
                n = r.step(x, y)
                t2 = clock.now()
                if i >= warmup:
                    r.step_ms.append((t2 - t0) * 1e3)
                    r.data_wait_ms.append((t1 - t0) * 1e3)
            if i >= warmup:
                _add(r.ledger, n)
    ms = events.ms()
    for r in runners:
        if r.mode == "synthetic":
            r.step_ms = [ms[j] for j in regions[id(r)]]


def _time_loader(name: str, batches: Iterator, steps: int, warmup: int, N: int, device) -> dict:
    """The loader alone, `steps` batches back to back after `warmup` (its prefetch queue drains in the first)."""
    clock = Clock(device)
    for _ in range(warmup):
        next(batches)
    times, start = [], clock.now()
    for _ in range(steps):
        t0 = clock.now(sync=False)
        next(batches)
        times.append((clock.now(sync=False) - t0) * 1e3)
    total = clock.now() - start
    return {"loader": name, "img_per_s": steps * N / total, "median_batch_ms": median(times), "batch_ms": times}


def _rows(runners: list[Runner], N: int, steps: int) -> list[dict]:
    kd = {r.mode: median(r.step_ms) for r in runners if r.name == "kd"}  # step ratios within a mode
    rows = []
    for r in runners:
        med = median(r.step_ms)
        rows.append({
            "mode": r.mode, "runner": r.name, "N": N,
            "teacher_images_per_step": r.ledger.teacher_images / steps,
            "img_per_s": N / (med / 1e3),
            "median_step_ms": med,
            "step_ratio_kd": med / kd[r.mode] if r.mode in kd else None,
            "flop_ratio_paper": r.ledger.cost_fraction("paper"),
            "flop_ratio_measured": r.ledger.cost_fraction("measured"),
            "median_data_wait_ms": median(r.data_wait_ms),
            "step_ms": r.step_ms,
            "data_wait_ms": r.data_wait_ms,
        })
    return rows


# --------------------------------------------------------------------------------------------------------
# the peer: timm's own distillation task


class TimmPeer:
    """The same pair distilled by `timm.task.LogitDistillationTask`: KD on all N images, a plain PyTorch step
    (forward in the run's autocast, loss.backward(), SGD with the run's settings), fed by a torchvision
    ImageFolder DataLoader with the standard train transforms and workers = CPU cores, pinned memory."""

    name = "timm-kd"

    def __init__(self, cfg: Config, teacher, num_classes: int, accelerator):
        from timm.task import DistillationTeacher, LogitDistillationTask

        from pipeline import IMAGENET_MEAN, IMAGENET_STD

        from .models import create_model
        from .optim import build_optimizer

        if cfg.mixed_precision == "fp16":
            raise ConfigError("--peer timm: mixed_precision=fp16 needs a grad scaler the peer does not have; "
                              "use bf16 or no")
        self.cfg, self.accelerator, self.device = cfg, accelerator, accelerator.device
        student = create_model(cfg.model.student, num_classes)
        if not hasattr(student, "pretrained_cfg"):  # torchvision models: timm's task reads the normalization here
            student.pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        self.mean, self.std = student.pretrained_cfg["mean"], student.pretrained_cfg["std"]
        self.task = LogitDistillationTask(
            student, DistillationTeacher(teacher, device=self.device), distill_loss_weight=cfg.loss.kd_weight,
            task_loss_weight=cfg.loss.ce_weight, temperature=cfg.loss.temperature, device=self.device,
            verbose=False).to(self.device)
        self.task.train()
        self.optimizer = build_optimizer(student, cfg.optim)
        self.workers = os.cpu_count() or 1
        import timm

        self.loader_name = (f"torchvision ImageFolder + DataLoader (workers={self.workers}, "
                            f"pin_memory={self.device.type == 'cuda'})")
        self.description = (f"timm {timm.__version__} timm.task.LogitDistillationTask (KD on all N, "
                            f"T={cfg.loss.temperature}, kd weight {cfg.loss.kd_weight}, task CE weight "
                            f"{cfg.loss.ce_weight}); plain loss.backward() + SGD; data: {self.loader_name} with "
                            "RandomResizedCrop(scale, ratio as configured), RandomHorizontalFlip if data.hflip, "
                            "ToTensor, Normalize")

    def __call__(self, images: Tensor, labels: Tensor) -> StepCounts:
        with self.accelerator.autocast():
            out = self.task(images, labels)
        out["loss"].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        N = images.shape[0]
        return StepCounts(batch=N, teacher=N, student_fwd=N, student_bwd=N)

    def batches(self) -> Iterator:
        """Endless (images, labels) on the device from the ImageFolder DataLoader."""
        cuda = self.device.type == "cuda"
        for images, labels in endless(self._make_loader()):
            yield images.to(self.device, non_blocking=cuda), labels.to(self.device, non_blocking=cuda)

    def _make_loader(self):
        from torchvision import datasets, transforms

        from .data import dataset_root

        d = self.cfg.data
        tf = [transforms.RandomResizedCrop(d.image_size, scale=tuple(d.crop_scale), ratio=tuple(d.crop_ratio))]
        if d.hflip:
            tf.append(transforms.RandomHorizontalFlip())
        tf += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        dataset = datasets.ImageFolder(str(Path(dataset_root(self.cfg)) / "train"), transforms.Compose(tf))
        return torch.utils.data.DataLoader(dataset, batch_size=d.batch_size, shuffle=True, drop_last=True,
                                           num_workers=self.workers, pin_memory=self.device.type == "cuda",
                                           persistent_workers=True)


# --------------------------------------------------------------------------------------------------------
# the table


def format_table(result: dict) -> str:
    head = (f"{'mode':<10} {'runner':<13} {'img/s':>8} {'step ms':>8} {'step/KD':>7} {'FLOP/KD':>7} "
            f"{'FLOP/KD':>8} {'teacher':>7} {'data wait':>9}")
    sub = f"{'':<10} {'':<13} {'':>8} {'median':>8} {'':>7} {'paper':>7} {'measured':>8} {'img/step':>7} {'ms':>9}"
    lines = [head, sub, "-" * len(head)]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in result["rows"]:
        lines.append(f"{r['mode']:<10} {r['runner']:<13} {r['img_per_s']:8.0f} {r['median_step_ms']:8.2f} "
                     f"{f(r['step_ratio_kd'], '7.3f')} {r['flop_ratio_paper']:7.3f} {r['flop_ratio_measured']:8.3f} "
                     f"{r['teacher_images_per_step']:7.0f} {f(r['median_data_wait_ms'], '9.2f')}")
    for d in result["data_alone"]:
        lines.append(f"{'pipeline':<10} data alone: {d['img_per_s']:8.0f} img/s  {d['loader']}")
    env = result["environment"]
    lines.append(f"{env['device']} | torch {env['versions']['torch']} | commit {env['git_commit']} | "
                 f"teacher weights: {result['teacher_weights']}")
    if result["peer"]:
        lines.append(f"timm-kd = {result['peer']}")
    return "\n".join(lines)
