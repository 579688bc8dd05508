"""What one training run steps, built from its config: the models, optimizer, schedule, selector, ledger and step.

`train` (training/trainer.py) builds one `Run` and loops over it; `bench`, `profile`, `eval` and the
wall-clock calibration build the same `Run` (or one selector) so the step they time is the training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator

from unixkd.selection import build_selector
from unixkd.selection.graphed import graphed
from unixkd.selection.selectors import SelectsRows, resolve_k

from . import wallclock
from .budget import budget_k
from .config import BUDGET_METHODS, Config, ConfigError
from .cost import CostLedger, measure_pair
from .fastpath import (
    TeacherForward,
    apply_channels_last,
    compile_student,
    configure_backends,
    selection_graph_mode,
    teacher_mode,
)
from .features import FeatureDistill, resolve_layers
from .models import create_model
from .optim import build_optimizer, build_scheduler
from .step import DistillStep


@dataclass
class Run:
    """Everything one training run steps: the models, optimizer, schedule, selector, ledger and the step."""

    student: torch.nn.Module  # prepared by Accelerate
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    selector: SelectsRows  # a Selector, or its CUDA-graph twin (selection/graphed.py)
    ledger: CostLedger
    step: DistillStep


def build_run(cfg: Config, accelerator: Accelerator, num_classes: int, steps_per_epoch: int) -> Run:
    """Models, optimizer, schedule, selector and step for `cfg`, placed by `accelerator` (shared with bench)."""
    distill = cfg.selection.method != "none"
    student = create_model(cfg.model.student, num_classes)
    teacher = None
    if distill:
        teacher = create_model(
            cfg.model.teacher,
            num_classes,
            pretrained=cfg.model.pretrained_teacher,
            checkpoint=cfg.model.teacher_checkpoint,
            weights=cfg.model.teacher_weights,
            trust=cfg.model.trust_checkpoint,
            log=accelerator.print,
        )
        teacher.eval().requires_grad_(False)

    # Cost model, docs/algorithms.md §1: per-image F_t, F_s, B_s measured once, before the models move.
    ledger = CostLedger(*measure_pair(teacher, student, cfg.data.image_size))

    features = None
    if distill and cfg.loss.feature != "none":  # AT / SP: the layers, checked before the models move
        L = cfg.loss
        t_layers, s_layers = resolve_layers(
            cfg.model.teacher, teacher, cfg.model.student, student, L.teacher_layers, L.student_layers
        )
        features = FeatureDistill(L.feature, L.at_weight if L.feature == "at" else L.sp_weight, t_layers, s_layers)

    configure_backends(accelerator.device)
    if cfg.train.channels_last:  # before the optimizer and Accelerate see the parameters
        apply_channels_last(student, teacher)
    optimizer = build_optimizer(student, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, cfg.train.epochs)
    student, optimizer = accelerator.prepare(student, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped once per iteration, not once per process
    if teacher is not None:
        teacher.to(accelerator.device)
    method = cfg.selection.method if distill else "kd"
    # a wall-clock budget: a stand-in k until the calibration (which needs this run's step) decides it
    provisional = cfg.data.batch_size if wallclock.enabled(cfg) and method in BUDGET_METHODS else None
    selector = make_selector(cfg, accelerator, method, ledger, student, k=provisional)
    step = DistillStep(
        accelerator,
        student,
        teacher,
        optimizer,
        scheduler,
        selector,
        temperature=cfg.loss.temperature,
        kd_weight=cfg.loss.kd_weight,
        ce_weight=cfg.loss.ce_weight,
        nonfinite=cfg.train.nonfinite,
        features=features,
    )
    step.student_call = compile_student(student, cfg.train.compile_student)  # saving/eval keep the module
    if teacher is not None:
        step.teacher_call = TeacherForward(teacher, teacher_mode(cfg, accelerator.device, features is not None))
    return Run(student, teacher, optimizer, scheduler, selector, ledger, step)


def make_selector(
    cfg: Config,
    accelerator: Accelerator,
    method: str,
    ledger: CostLedger | None = None,
    student: torch.nn.Module | None = None,
    k: int | None = None,
) -> SelectsRows:
    """The selector for `method` with the options of `cfg.selection` (bench builds one per method it times).

    Compute-budget mode (`selection.budget`, needs the ledger's per-image FLOPs): k is chosen so the run
    spends that share of conventional KD's FLOPs. A wall-clock budget's k comes from its calibration
    (training/wallclock.py), passed in as `k` (which overrides the config's k and budget).
    """
    s = cfg.selection
    if k is None and s.budget is not None and method in BUDGET_METHODS and wallclock.enabled(cfg):
        raise ValueError("a wall-clock budget's k comes from its calibration: pass k= (training/wallclock.py)")
    if k is None and s.budget is not None and ledger is not None and method != "kd":
        k, line = budget_k(
            method,
            s.budget,
            s.budget_convention,
            N=cfg.data.batch_size,
            Ft=ledger.Ft,
            Fs=ledger.Fs,
            measured_Bs=ledger.Bs,
        )
        if accelerator.is_main_process:
            print(line)
    k = s.k if k is None else k
    _check_batchnorm_rows(cfg, method, k, accelerator.unwrap_model(student) if student is not None else None)
    selector = build_selector(
        method,
        k=k,
        alpha=s.alpha,
        w=s.w,
        b=s.b,
        criterion=s.criterion,
        score_mode=s.score_mode,
        tl_alpha=s.tl_alpha,
        pool=s.pool,
        n_pick=s.n_pick,
        pick_criterion=s.pick_criterion,
        temperature=cfg.loss.temperature,
        seed=cfg.seed + accelerator.process_index,
    )  # per-rank selection randomness
    mode = selection_graph_mode(cfg, accelerator.device)
    return graphed(selector, mode=mode) if mode else selector  # UNIX: one CUDA graph replay per step


def _check_batchnorm_rows(cfg: Config, method: str, k, student: torch.nn.Module | None) -> None:
    """BatchNorm in training mode normalizes each channel over the rows of the batch: a student with BatchNorm
    cannot train (torch refuses at a 1×1 feature map, and one row's statistics are its own) on fewer than 2
    rows per step. Checked here, before any data is read, with the key to change."""
    if student is None or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in student.modules()):
        return
    N = cfg.data.batch_size
    if N < 2:
        raise ConfigError(
            f"config key 'data.batch_size' must be >= 2 for the student {cfg.model.student} "
            f"(it has BatchNorm layers, which need 2 or more images per batch), got {N}"
        )
    if method in BUDGET_METHODS and resolve_k(k, N) < 2:
        key, value = ("budget", cfg.selection.budget) if cfg.selection.budget is not None else ("k", cfg.selection.k)
        raise ConfigError(
            f"config key 'selection.{key}'={value!r} leaves 1 row per step for the student "
            f"{cfg.model.student}, whose BatchNorm layers need 2 or more"
        )
