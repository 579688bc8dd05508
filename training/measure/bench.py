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
* fast path (--fast-path): `fused` times each selector as the run resolves it (on CUDA: UNIX's selection
  replayed from its CUDA graph, the teacher's forward from CUDA graphs); `eager` the same step with the
  plain selector and the teacher and student modules called directly (rows named "unix/eager"); `both`
  times the two side by side in the same rounds. Where the run resolves to eager anyway (a CPU), there is
  nothing fused to time: one line says so and the eager runners are timed once.

Then, on the resident batch, the micro-benchmarks of training/measure/bench_micro.py (the selection against a bare
student forward, the teacher forward in each mode), and the fast-path targets computed from all of it
(training/measure/targets.py).

Runners never share what the fast path keeps in static buffers: each has its own selector (a graphed one
captures its own graph, whose outputs the next replay overwrites) and its own graphed teacher forward (one
graph per input shape, at most two: shared by runners of several shapes or dtypes, the surplus would run
eagerly without a word). Each row records how its parts ran and how many calls fell back to eager.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from unixkd.selection import GraphedUnixSelector

from .. import wallclock
from ..build import make_selector
from ..config import Config, ConfigError, to_dict
from ..cost import CostLedger
from ..distributed import make_accelerator
from ..errors import UserError
from ..fastpath import TeacherForward, eager_step, step_modes
from ..step import DistillStep, StepCounts
from .bench_micro import format_micro, selection_micro, teacher_micro, teacher_modes_for
from .targets import format_targets, targets
from .timing import (
    Clock,
    EventClock,
    build_timed_run,
    endless,
    environment,
    median,
    mfu,
    peak_flops,
    synthetic_batch,
    teacher_weights,
    timing_data,
)

PEERS = ("timm",)
FAST_PATHS = ("fused", "eager", "both")


@dataclass
class Runner:
    """One thing being timed: a step (images, labels) -> StepCounts in one data mode, and its records."""

    mode: str  # synthetic | pipeline
    name: str
    step: Callable[[Tensor, Tensor], StepCounts]
    ledger: CostLedger
    batches: Iterator | None = None  # pipeline mode: where its batches come from
    distill: DistillStep | None = None  # this project's runners: the step (its selector and teacher call)
    selector: str | None = None  # kd | random | unix ...; None for the peer
    fast_path: str | None = None  # fused (as the run resolves it) | eager; None for the peer
    step_ms: list[float] = field(default_factory=list)
    data_wait_ms: list[float] = field(default_factory=list)


def bench(
    cfg: Config,
    *,
    selectors: list[str],
    steps: int = 20,
    warmup: int = 3,
    data: str = "synthetic",
    peer: str | None = None,
    fast_path: str = "fused",
    teacher_modes: str = "auto",
    note: str = "",
    accelerator=None,
) -> dict:
    """Time `selectors` (and the peer) on `cfg`'s pair; returns the result record (see benchmarks/README.md)."""
    _check_options(cfg, selectors, steps, warmup, peer, fast_path)
    accelerator = accelerator or make_accelerator(cfg)
    device, N = accelerator.device, cfg.data.batch_size
    t_modes, modes = _check_setup(cfg, accelerator, data, peer, teacher_modes)  # before anything is built
    loaders = timing_data(cfg, accelerator, modes)
    num_classes = cfg.model.num_classes or len(loaders.classes)
    run = build_timed_run(cfg, accelerator, num_classes)
    costs = dict(Ft=run.ledger.Ft, Fs=run.ledger.Fs, Bs=run.ledger.Bs)

    peer_step = TimmPeer(cfg, run.teacher, num_classes, accelerator) if peer == "timm" else None
    ours = peer_batches = None  # pipeline mode: this project's loader (DALI), and the peer's
    if "pipeline" in modes:
        ours = endless(loaders.train)
        peer_batches = peer_step.batches() if peer_step is not None else None
    calibrated, fused = _selectors(cfg, accelerator, run, num_classes, selectors)
    runners, path = build_runners(run, fused, modes, fast_path, peer_step, ours, peer_batches, device)
    if path["note"]:
        print(path["note"])

    images, labels = synthetic_batch(cfg, num_classes, device, seed=cfg.seed)  # the micro-benchmarks use it too
    _time_interleaved(runners, images, labels, steps, warmup, device)
    data_alone = _time_data_alone(loaders, ours, peer_step, peer_batches, steps, warmup, N, device)

    peak = peak_flops(device, cfg.mixed_precision)
    p2, teacher = _micro(cfg, accelerator, run, fused, t_modes, images, labels, peak, steps, warmup)
    args = {
        "selectors": selectors,
        "steps": steps,
        "warmup": warmup,
        "data": data,
        "peer": peer,
        "fast_path": fast_path,
        "teacher_modes": teacher_modes,
    }
    parts = dict(num_classes=num_classes, costs=costs, path=path, peer_step=peer_step, calibrated=calibrated)
    return _record(cfg, device, note, args, parts, runners, steps, peak, data_alone, p2, teacher)


def _record(
    cfg: Config, device, note: str, args: dict, parts: dict, runners, steps: int, peak, data_alone, p2, teacher
):
    """bench's result record: what ran, how it was timed, the rows, the micro-benchmarks, the targets."""
    peer_step, calibrated = parts["peer_step"], parts["calibrated"]
    result = {
        "kind": "unixkd bench",
        "environment": environment(device),
        "note": note,
        "args": args,
        "timing": _timing_description(device),
        "teacher_weights": teacher_weights(cfg),
        "num_classes": parts["num_classes"],
        "flops_per_image": parts["costs"],
        "fast_path": parts["path"],
        "peak": peak,
        "peer": peer_step.description if peer_step is not None else None,
        "rows": _rows(runners, cfg.data.batch_size, steps, peak),
        "data_alone": data_alone,
        "p2": p2,
        "teacher_forward": teacher,
        "config": to_dict(cfg),
        "wallclock": {name: cal.state_dict() for name, cal in calibrated.items()} or None,
    }
    result["targets"] = targets(result)
    return result


def _check_options(cfg: Config, selectors: list[str], steps: int, warmup: int, peer: str | None, fast_path: str):
    """bench's own options, checked before anything is built."""
    from unixkd.selection import SELECTORS

    bad = [s for s in selectors if s not in SELECTORS]
    if not selectors or bad:
        raise ConfigError(f"--selectors: unknown selector(s) {bad or selectors}; allowed: {', '.join(SELECTORS)}")
    if cfg.selection.method == "none":
        raise ConfigError("bench times distillation steps; selection.method=none trains without a teacher")
    if peer is not None and peer not in PEERS:
        raise ConfigError(f"--peer {peer}: must be one of {', '.join(PEERS)}")
    if fast_path not in FAST_PATHS:
        raise ConfigError(f"--fast-path {fast_path}: must be one of {', '.join(FAST_PATHS)}")
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")


def _check_setup(cfg: Config, accelerator, data: str, peer: str | None, teacher_modes: str):
    """One process, the teacher modes this device has, and data modes the peer can read; returns both modes."""
    if accelerator.num_processes > 1:
        raise UserError("bench runs on one process; start it with python, not accelerate launch --multi_gpu")
    t_modes = teacher_modes_for(teacher_modes, accelerator.device)  # checked before anything is built
    modes = ["synthetic", "pipeline"] if data == "both" else [data]
    if peer is not None and "pipeline" in modes and cfg.data.dataset.startswith("cifar"):
        raise ConfigError(
            f"--peer {peer} with --data {data} reads an image folder (ImageFolder); "
            f"data.dataset={cfg.data.dataset} is arrays: use --data synthetic"
        )
    return t_modes, modes


def _selectors(cfg: Config, accelerator, run, num_classes: int, selectors: list[str]) -> tuple[dict, dict]:
    """Each selector as the run builds it (a wall-clock budget's k calibrated first); returns (calibrated, fused)."""
    calibrated = wallclock.for_bench(cfg, accelerator, run, num_classes, selectors)  # a wall-clock budget's k
    fused = {
        name: make_selector(cfg, accelerator, name, run.ledger, k=calibrated[name].k if name in calibrated else None)
        for name in selectors
    }  # budget mode too
    return calibrated, fused


def _time_data_alone(loaders, ours, peer_step, peer_batches, steps: int, warmup: int, N: int, device) -> list[dict]:
    """Each loader alone, after the steps: this project's (pipeline mode) and the peer's."""
    data_alone = []
    if ours is not None:  # each loader from a fresh epoch: no epoch restart inside the timed batches if it fits
        ours.close()
        name = f"{type(loaders.train).__name__} (this project's loader)"
        data_alone.append(
            {
                **_time_loader(name, endless(loaders.train), steps, warmup, N, device),
                "ours": True,
                "batches_per_epoch": len(loaders.train),
            }
        )
    if peer_batches is not None:
        peer_batches.close()  # its DataLoader workers end with it
        data_alone.append(
            {
                **_time_loader(peer_step.loader_name, peer_step.batches(), steps, warmup, N, device),
                "ours": False,
                "batches_per_epoch": peer_step.batches_per_epoch,
            }
        )
    return data_alone


def _micro(cfg: Config, accelerator, run, fused: dict, t_modes, images, labels, peak, steps: int, warmup: int):
    """The micro-benchmarks on the synthetic batch: P2 (UNIX's selection) and the teacher forward's modes."""
    N = cfg.data.batch_size
    p2 = None
    if "unix" in fused:  # P2: UNIX's selection against the forward it needs anyway
        p2 = selection_micro(
            accelerator, run.step.scorer, images, labels, fused["unix"], run.ledger, peak, steps=steps, warmup=warmup
        )
    teacher = None
    if t_modes:  # "CUDA graph or torch.compile: measure which wins", on the rows the teacher sees
        teacher = teacher_micro(
            accelerator,
            run.teacher,
            images,
            _teacher_rows(cfg, fused, N),
            t_modes,
            run.ledger,
            peak,
            steps=steps,
            warmup=warmup,
        )
    return p2, teacher


def _timing_description(device) -> str:
    """How bench timed what it records (the result's "timing")."""
    return (
        "interleaved over runners and modes, warm-up rounds first. synthetic: "
        + (
            "CUDA events around each step, one sync at the end; "
            if device.type == "cuda"
            else "time.perf_counter around each step; "
        )
        + "pipeline: perf_counter around data wait + step, device synced after each step; "
        "img/s = N / median step time. data alone: after the steps, each loader from a fresh epoch, "
        "batches back to back, img/s = N x batches / total time. micro-benchmarks (p2, teacher_forward): "
        "after that, on the synthetic batch, interleaved the same way. MFU = FLOPs (measured "
        "convention) / median time / peak"
    )


def _teacher_rows(cfg: Config, fused: dict, N: int) -> int:
    """The rows the teacher sees per step: UNIX's (or Random's) k as built (budget mode included), else the
    config's selection.k."""
    from unixkd.selection import resolve_k

    for name in ("unix", "random"):
        if name in fused:
            return resolve_k(fused[name].k, N)
    return resolve_k(cfg.selection.k, N)


# --------------------------------------------------------------------------------------------------------
# the runners: as the run resolves it (fused) and eager


def build_runners(
    run,
    fused: dict,
    modes: list[str],
    fast_path: str,
    peer_step=None,
    ours: Iterator | None = None,
    peer_batches: Iterator | None = None,
    device=None,
) -> tuple[list[Runner], dict]:
    """One runner per data mode × path × selector (+ the peer per mode), and what the fast path resolved to.

    `fused`: each selector as `make_selector` builds it for the run (graphed where the run graphs it). A
    runner gets its own deep copy of it and, on the fused path, its own graphed teacher forward.
    """
    resolved = step_modes(run.step)
    graphed = [s.mode for s in fused.values() if isinstance(s, GraphedUnixSelector)]
    resolved["selection"] = graphed[0] if graphed else "eager"
    differs = resolved != {"selection": "eager", "teacher": "eager", "student": "eager"}
    groups, note = _path_groups(fast_path, differs, device)
    costs = dict(Ft=run.ledger.Ft, Fs=run.ledger.Fs, Bs=run.ledger.Bs)

    runners = []
    for mode in modes:
        batches = None if mode == "synthetic" else ours
        for group, suffix in groups:
            for name in fused:
                step = _runner_step(run, fused, name, group)
                runners.append(
                    Runner(
                        mode,
                        name + suffix,
                        lambda x, y, step=step: step(x, y)[1],
                        CostLedger(**costs),
                        batches=batches,
                        distill=step,
                        selector=name,
                        fast_path=group,
                    )
                )
        if peer_step is not None:
            runners.append(
                Runner(
                    mode,
                    peer_step.name,
                    peer_step,
                    CostLedger(**costs),
                    batches=None if mode == "synthetic" else peer_batches,
                )
            )
    path = {
        "requested": fast_path,
        "resolved": resolved,
        "fused_differs_from_eager": differs,
        "timed": [group for group, _ in groups],
        "note": note,
    }
    return runners, path


def _path_groups(fast_path: str, differs: bool, device) -> tuple[list[tuple[str, str]], str | None]:
    """The paths to time as (group, name suffix), and a note when the run as configured is already eager."""
    note = None
    if differs:
        groups = {
            "fused": [("fused", "")],
            "eager": [("eager", "/eager")],
            "both": [("fused", ""), ("eager", "/eager")],
        }[fast_path]
    else:  # the run as configured is the eager path: one set of runners, named as asked
        groups = [("eager", "" if fast_path == "fused" else "/eager")]
        where = device.type if device is not None else "this device"
        if fast_path != "eager":
            note = f"fast path: on {where} this run resolves to eager (selection, teacher and student all eager): " + (
                "timing the eager runners only" if fast_path == "both" else "its rows are eager"
            )
    return groups, note


def _runner_step(run, fused: dict, name: str, group: str) -> DistillStep:
    """One runner's step: the run's, with its own copy of selector `name` (and, fused, its own teacher call)."""
    step = copy.copy(run.step)  # the same models, optimizer and phases
    step.selector = copy.deepcopy(fused[name])  # its own: a graphed selector's buffers are per instance
    if group == "eager":
        return eager_step(step)
    step.teacher_call = _own_teacher_call(run.step.teacher_call)
    return step


def _own_teacher_call(call):
    """The teacher call for one fused runner: a graphed/static TeacherForward of its own (see the module
    docstring); a compiled or eager call has no static buffers and is shared as it is (and compiled once)."""
    if isinstance(call, TeacherForward) and call.mode in ("graph", "static"):
        return TeacherForward(call.teacher, call.mode, max_graphs=call.max_graphs, warmup=call.warmup)
    return call


# --------------------------------------------------------------------------------------------------------
# the timing loops


def _add(ledger: CostLedger, n: StepCounts) -> None:
    ledger.add_step(batch=n.batch, teacher=n.teacher, student_fwd=n.student_fwd, student_bwd=n.student_bwd)


def _time_interleaved(runners: list[Runner], images: Tensor, labels: Tensor, steps: int, warmup: int, device) -> None:
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
    """The loader alone, `steps` batches back to back after `warmup` (its start-up and prefetch queue are
    absorbed by those). Started at an epoch's beginning, the timed batches see no epoch restart (a new DALI
    pipeline, new DataLoader iteration) as long as warmup + steps <= batches per epoch: a small benchmark folder
    would otherwise charge the loader a start-up that a real epoch of thousands of batches amortizes."""
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


def _rows(runners: list[Runner], N: int, steps: int, peak: dict) -> list[dict]:
    # step ratios within a mode and a path: fused UNIX against fused KD, eager against eager; the peer
    # against the first path timed (the run as it resolves, when that was timed)
    kd = {(r.mode, r.fast_path): median(r.step_ms) for r in runners if r.selector == "kd"}
    first_path = next((r.fast_path for r in runners if r.fast_path), None)
    rows = []
    for r in runners:
        med = median(r.step_ms)
        base = kd.get((r.mode, r.fast_path or first_path))
        flops = r.ledger.flops("measured") / steps  # what one step computed, the counted backward included
        rows.append(
            {
                "mode": r.mode,
                "runner": r.name,
                "selector": r.selector,
                "fast_path": r.fast_path,
                "modes": step_modes(r.distill) if r.distill is not None else None,
                "eager_fallbacks": _fallbacks(r.distill),
                "N": N,
                "teacher_images_per_step": r.ledger.teacher_images / steps,
                "img_per_s": N / (med / 1e3),
                "median_step_ms": med,
                "step_ratio_kd": med / base if base else None,
                "flop_ratio_paper": r.ledger.cost_fraction("paper"),
                "flop_ratio_measured": r.ledger.cost_fraction("measured"),
                "flops_per_step": flops,
                "achieved_tflops": flops / (med / 1e3) / 1e12,
                "mfu": mfu(flops, med, peak),
                "median_data_wait_ms": median(r.data_wait_ms),
                "step_ms": r.step_ms,
                "data_wait_ms": r.data_wait_ms,
            }
        )
    return rows


def _fallbacks(step: DistillStep | None) -> dict | None:
    """Calls of a fused runner that took the eager path after all (another shape); None where nothing is graphed.
    Anything but 0 means its row timed a mix of fused and eager."""
    if step is None:
        return None
    selector, teacher = step.selector, step.teacher_call
    graphed_teacher = isinstance(teacher, TeacherForward) and teacher.mode in ("graph", "static")
    out = {
        "selection": selector.fallbacks if isinstance(selector, GraphedUnixSelector) else None,
        "teacher": teacher.eager_calls if graphed_teacher else None,
    }
    return out if any(v is not None for v in out.values()) else None


# --------------------------------------------------------------------------------------------------------
# the peer: timm's own distillation task


class TimmPeer:
    """The same pair distilled by `timm.task.LogitDistillationTask`: KD on all N images, a plain PyTorch step
    (forward in the run's autocast, loss.backward(), SGD with the run's settings), fed by a torchvision
    ImageFolder DataLoader with the standard train transforms and workers = CPU cores, pinned memory."""

    name = "timm-kd"

    def __init__(self, cfg: Config, teacher, num_classes: int, accelerator):
        from timm.task import DistillationTeacher, LogitDistillationTask

        from unixkd.pipeline import IMAGENET_MEAN, IMAGENET_STD

        from ..models import create_model
        from ..optim import build_optimizer

        if cfg.mixed_precision == "fp16":
            raise ConfigError(
                "--peer timm: mixed_precision=fp16 needs a grad scaler the peer does not have; use bf16 or no"
            )
        self.cfg, self.accelerator, self.device = cfg, accelerator, accelerator.device
        student = create_model(cfg.model.student, num_classes)
        if not hasattr(student, "pretrained_cfg"):  # torchvision models: timm's task reads the normalization here
            student.pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        self.mean, self.std = student.pretrained_cfg["mean"], student.pretrained_cfg["std"]
        self.task = LogitDistillationTask(
            student,
            DistillationTeacher(teacher, device=self.device),
            distill_loss_weight=cfg.loss.kd_weight,
            task_loss_weight=cfg.loss.ce_weight,
            temperature=cfg.loss.temperature,
            device=self.device,
            verbose=False,
        ).to(self.device)
        self.task.train()
        self.optimizer = build_optimizer(student, cfg.optim)
        self.workers = os.cpu_count() or 1
        self.batches_per_epoch: int | None = None  # known once batches() made its DataLoader
        import timm

        self.loader_name = (
            f"torchvision ImageFolder + DataLoader (workers={self.workers}, pin_memory={self.device.type == 'cuda'})"
        )
        self.description = (
            f"timm {timm.__version__} timm.task.LogitDistillationTask (KD on all N, "
            f"T={cfg.loss.temperature}, kd weight {cfg.loss.kd_weight}, task CE weight "
            f"{cfg.loss.ce_weight}); plain loss.backward() + SGD; data: {self.loader_name} with "
            "RandomResizedCrop(scale, ratio as configured), RandomHorizontalFlip if data.hflip, "
            "ToTensor, Normalize"
        )

    def __call__(self, images: Tensor, labels: Tensor) -> StepCounts:
        with self.accelerator.autocast():
            out = self.task(images, labels)
        out["loss"].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        N = images.shape[0]
        return StepCounts(batch=N, teacher=N, student_fwd=N, student_bwd=N)

    def batches(self) -> Iterator:
        """Endless (images, labels) on the device from a new ImageFolder DataLoader."""
        cuda = self.device.type == "cuda"
        loader = self._make_loader()
        self.batches_per_epoch = len(loader)
        for images, labels in endless(loader):
            yield images.to(self.device, non_blocking=cuda), labels.to(self.device, non_blocking=cuda)

    def _make_loader(self):
        from torchvision import datasets, transforms

        from ..data import dataset_root

        d = self.cfg.data
        tf = [transforms.RandomResizedCrop(d.image_size, scale=tuple(d.crop_scale), ratio=tuple(d.crop_ratio))]
        if d.hflip:
            tf.append(transforms.RandomHorizontalFlip())
        tf += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        dataset = datasets.ImageFolder(str(Path(dataset_root(self.cfg)) / "train"), transforms.Compose(tf))
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=d.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=True,
        )


# --------------------------------------------------------------------------------------------------------
# the table


def format_table(result: dict) -> str:
    w = max(13, *(len(r["runner"]) for r in result["rows"]))
    head = (
        f"{'mode':<10} {'runner':<{w}} {'sel/teacher':<13} {'img/s':>8} {'step ms':>8} {'step/KD':>7} "
        f"{'FLOP/KD':>7} {'FLOP/KD':>8} {'teacher':>7} {'data wait':>9} {'MFU':>6}"
    )
    sub = (
        f"{'':<10} {'':<{w}} {'':<13} {'':>8} {'median':>8} {'':>7} {'paper':>7} {'measured':>8} "
        f"{'img/step':>7} {'ms':>9} {'':>6}"
    )
    lines = [head, sub, "-" * len(head)]

    def f(v, fmt):  # "-" where there is no value, right-aligned in the column's width
        return ("-" if v is None else format(v, fmt)).rjust(int(fmt.split(".")[0]))

    for r in result["rows"]:
        path = "-" if r["modes"] is None else f"{r['modes']['selection']}/{r['modes']['teacher']}"
        lines.append(
            f"{r['mode']:<10} {r['runner']:<{w}} {path:<13} {r['img_per_s']:8.0f} {r['median_step_ms']:8.2f} "
            f"{f(r['step_ratio_kd'], '7.3f')} {r['flop_ratio_paper']:7.3f} {r['flop_ratio_measured']:8.3f} "
            f"{r['teacher_images_per_step']:7.0f} {f(r['median_data_wait_ms'], '9.2f')} "
            f"{f(r['mfu'], '6.1%')}"
        )
    args = result["args"]
    for d in result["data_alone"]:
        per_epoch = d.get("batches_per_epoch")
        restarts = (
            f" (epoch restarts inside the timing: {per_epoch} batches per epoch)"
            if per_epoch and args["warmup"] + args["steps"] > per_epoch
            else ""
        )
        lines.append(f"{'pipeline':<10} data alone: {d['img_per_s']:8.0f} img/s  {d['loader']}{restarts}")
    lines += format_micro(result)
    lines += wallclock.bench_lines(result)
    fallbacks = [
        f"{r['mode']} {r['runner']}: {v}"
        for r in result["rows"]
        for v in [r["eager_fallbacks"]]
        if v and any(v.values())
    ]
    if fallbacks:
        lines.append("WARNING: fused runners that ran some calls eagerly: " + "; ".join(fallbacks))
    env = result["environment"]
    lines.append(
        f"{env['device']} | torch {env['versions']['torch']} | commit {env['git_commit']} | "
        f"teacher weights: {result['teacher_weights']} | MFU peak: {result['peak']['basis']}"
    )
    student = {r["modes"]["student"] for r in result["rows"] if r["modes"]}
    if student - {"eager"}:
        lines.append("student: compiled (train.compile_student) on the fused rows")
    if result["peer"]:
        lines.append(f"timm-kd = {result['peer']}")
    lines += format_targets(result["targets"])
    return "\n".join(lines)
