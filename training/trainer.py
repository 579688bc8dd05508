"""The training loop: fetch batch → select → teacher → student → loss → step, driven by Accelerate.

Accelerate owns devices, DDP, mixed precision and checkpoint I/O; pipeline/ yields (images, labels) on the
device; selection/ decides which k rows the teacher sees. This file composes them and keeps the books:
metrics.jsonl, the cost ledger, checkpoints, the final student weights.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from . import checkpoint as ckpt
from . import run_dir, trackers, wallclock
from .analytics import SamplingLog
from .build import build_run, make_selector
from .config import Config, save_config
from .data import build_data
from .distributed import make_accelerator, on_main
from .errors import UserError
from .evaluate import evaluate
from .files import atomic_write_json
from .guards import NonFiniteError, PeerTimeoutError, PreemptionFlag, RunStopped, is_collective_timeout
from .models import shapes_mismatch


def train(cfg: Config, accelerator: Accelerator | None = None) -> dict:
    """Run one training job end to end; returns the final summary (also the last row of metrics.jsonl).

    A preemption signal (SIGTERM/SIGUSR1) or Ctrl-C ends the run early at a step boundary with a checkpoint;
    the summary then has `preempted: true`. A non-finite loss or gradient, a checkpoint that cannot be written
    or a peer that stops answering raises a RunStopped error with the last complete checkpoint named.
    The trackers of `train.log_with` get every metrics.jsonl row; an `accelerator` passed in logs to the ones it
    was made with (`make_accelerator(cfg, run=True)`).
    """
    accelerator = accelerator or make_accelerator(cfg, run=True)
    main = accelerator.is_main_process
    out = Path(cfg.out_dir)
    held = {}  # the out_dir lock: the main process's alone (an open file, never sent to the others)

    def claim() -> list[str]:
        held["lock"], notes = run_dir.claim(cfg)  # refuses before any expensive work
        return notes

    _print(main, on_main(accelerator, claim))
    record = {"started": False}  # set once this run's config.yaml is in out_dir
    ok = False
    try:
        summary = _train(cfg, accelerator, out, record)
        ok = True
        if main:
            state = "preempted" if summary.get("preempted") else "finished"
            run_dir.write_status(out, state, step=summary["step"], checkpoint=summary.get("checkpoint"))
        return summary
    except BaseException as e:
        if main and record["started"]:  # say how it ended (a refusal before the start leaves the folder alone)
            state = (
                "stopped"
                if isinstance(e, RunStopped)
                else "interrupted"
                if isinstance(e, KeyboardInterrupt)
                else "failed"
            )
            run_dir.write_status(
                out,
                state,
                message=(str(e).splitlines() or [type(e).__name__])[0],
                checkpoint=str(ckpt.latest_checkpoint(out) or "") or None,
            )
        raise
    finally:
        trackers.finish(accelerator, failed=not ok)  # however it ended (preempted: ok, with its checkpoint)
        if "lock" in held:
            held["lock"].release()


def _train(cfg: Config, accelerator: Accelerator, out: Path, record: dict) -> dict:
    main = accelerator.is_main_process
    set_seed(cfg.seed)  # identical model init on every process

    data = build_data(cfg, accelerator)
    steps_per_epoch = len(data.train)
    num_classes = cfg.model.num_classes or len(data.classes)
    run = build_run(cfg, accelerator, num_classes, steps_per_epoch)
    student, scheduler, selector, ledger, step_fn = run.student, run.scheduler, run.selector, run.ledger, run.step
    C = len(data.classes)
    sampling = SamplingLog(
        out, data.classes, accelerator.device, write=main, loader=data.train, count_images=cfg.train.count_images
    )
    step_fn.on_select = sampling.observe  # which classes (and images) each step trains on

    fingerprint = {
        "world_size": accelerator.num_processes,
        "batch_size": cfg.data.batch_size,
        "seed": cfg.seed,
        "method": cfg.selection.method,
        "student": cfg.model.student,
        **data_identity(data),
        **optimizer_identity(cfg),
    }
    resume_from = on_main(accelerator, lambda: _check_resume(cfg, out, accelerator.unwrap_model(student), fingerprint))
    step, epoch, start_batch, data_state, train_s = 0, 0, 0, None, 0.0
    state = ckpt.load_trainer_state(resume_from, accelerator.process_index) if resume_from is not None else None
    calibration = None
    if wallclock.enabled(cfg):  # k from the checkpoint's calibration, or measured now on this run's own step
        saved = None if state is None else state.get("wallclock")
        if state is not None and saved is None and not cfg.resume_force:
            raise UserError(
                f"resume={cfg.resume}: {resume_from} was saved by a run without a wall-clock calibration, this "
                "run asks for selection.budget_convention=wallclock; resume_force=true calibrates now"
            )
        calibration = wallclock.for_run(cfg, accelerator, run, num_classes, saved)
        selector = make_selector(cfg, accelerator, cfg.selection.method, ledger, student, k=calibration.k)
        run.selector = step_fn.selector = selector
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        selector.load_state_dict(state["selector"])
        ledger.load_state_dict(state["ledger"])
        sampling.load_state_dict(state.get("sampling"))
        step, epoch, start_batch = state["step"], state["epoch"], state["batch_in_epoch"]
        train_s = state.get("train_s", 0.0)  # time in training steps so far (evaluations and saves left out)
        data_state = state["data"]  # DALI's reader position and augmentation RNG (None at an epoch boundary)
    if main:  # every check passed: from here on the folder describes this run
        aside, names = ckpt.set_aside_after(out, step) if resume_from is not None else (None, [])
        if aside is not None:
            print(
                f"checkpoints after step {step} ({', '.join(names)}) moved to {aside}: this run continues from "
                f"step {step}; remove that folder when you no longer need it"
            )
        dropped = run_dir.truncate_metrics(out, step)
        save_config(cfg, out / run_dir.CONFIG)
        if calibration is not None:
            atomic_write_json(out / wallclock.RECORD, calibration.state_dict(), indent=1)
        run_dir.write_status(out, "running", step=step)
        record["started"] = True
        if resume_from is not None:
            print(
                f"resumed from {resume_from} at step {step} (epoch {epoch}, batch {start_batch})"
                + (f"; dropped {dropped} metrics.jsonl row(s) logged after it" if dropped else "")
            )
    on_main(accelerator, lambda: trackers.start(accelerator, cfg, step, resumed=resume_from is not None))

    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    log = run_dir.MetricsLog(out / run_dir.METRICS, main, mirror=lambda row: trackers.log(accelerator, row))
    world = accelerator.num_processes

    def save(batch_in_epoch: int, epoch_: int, loader_state: dict | None = None) -> Path:
        state = {
            "step": step,
            "epoch": epoch_,
            "batch_in_epoch": batch_in_epoch,
            "fingerprint": fingerprint,
            "selector": selector.state_dict(),
            "ledger": ledger.state_dict(),
            "data": loader_state,
            "sampling": sampling.state_dict(),
            "wallclock": None if calibration is None else calibration.state_dict(),
            "train_s": train_s + max(0.0, time.perf_counter() - t_log - paused),  # + the steps since the last row
        }
        return ckpt.save_checkpoint(accelerator, out, step, state, keep=cfg.train.keep_checkpoints)

    def cost_fields() -> dict:  # cost_fraction: paper convention (B_s = F_s); *_measured: counted B_s
        fields = {**ledger.metrics(), "world_size": world, "train_s": train_s}
        if calibration is not None:
            fields["wall_fraction_predicted"] = calibration.predicted_fraction
        return fields

    @contextmanager
    def pause():  # an evaluation or a checkpoint save: not training-step time (step_ms, train_s, wall_fraction)
        nonlocal paused
        t0 = time.perf_counter()
        try:
            yield
        finally:
            paused += time.perf_counter() - t0

    bar = _progress(total_steps, step, enabled=main and cfg.train.progress)
    loss_sum = torch.zeros((), device=accelerator.device)
    t_log, steps_since_log, paused = time.perf_counter(), 0, 0.0
    stop_state = None  # the loader's state when the run stops mid-epoch (max_steps, preemption)
    preempted = False
    student.train()
    with (
        PreemptionFlag(repeat_aborts=world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ) as preemption,
        _stop_cleanly(out, lambda: step),
    ):
        while step < total_steps and epoch < cfg.train.epochs and not preempted:
            if data_state is not None and data_state["dali"]:  # continue the epoch exactly: samples and crops
                data.train.load_state_dict(data_state)
                data_state = None
            else:
                data.train.set_epoch(epoch, start_batch=start_batch)
            sampling.set_epoch(epoch, start_batch)
            batch_in_epoch = start_batch
            for images, labels in data.train:
                loss, n = step_fn(images, labels)  # select -> teacher on k rows -> student -> SGD step
                ledger.add_step(
                    batch=n.batch * world,
                    teacher=n.teacher * world,
                    student_fwd=n.student_fwd * world,
                    student_bwd=n.student_bwd * world,
                )
                loss_sum += loss  # stays on the device: read once per log_every steps
                step, batch_in_epoch, steps_since_log = step + 1, batch_in_epoch + 1, steps_since_log + 1
                bar.update(1)

                if step % cfg.train.log_every == 0 or step == total_steps:
                    mean_loss = accelerator.reduce(loss_sum, reduction="mean").item() / steps_since_log  # sync
                    dt = time.perf_counter() - t_log
                    stepping = max(dt - paused, 1e-9)  # the interval's time in steps (data wait included)
                    train_s += stepping
                    row = {
                        "step": step,
                        "epoch": epoch,
                        "loss": mean_loss,
                        "lr": scheduler.get_last_lr()[0],
                        "img_per_s": steps_since_log * n.batch * world / dt,
                        "step_ms": 1e3 * stepping / steps_since_log,
                        **cost_fields(),
                    }
                    if calibration is not None:  # measured step time against KD's predicted one
                        row["wall_fraction"] = row["step_ms"] / calibration.kd_step_ms
                    if step_fn.skipped:
                        row["skipped_steps"] = step_fn.skipped
                    log.write(row)
                    postfix = {"loss": f"{mean_loss:.3f}", "img_s": f"{row['img_per_s']:.0f}"}
                    postfix["cost"] = f"{row['cost_fraction']:.3f}"
                    if calibration is not None:
                        postfix["wall"] = f"{row['wall_fraction']:.3f}"
                    bar.set_postfix(**postfix)
                    loss_sum.zero_()
                    t_log, steps_since_log, paused = time.perf_counter(), 0, 0.0
                mid_epoch = batch_in_epoch < steps_per_epoch
                if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                    # sync: a checkpoint copies weights, optimizer state and counts to the host
                    with pause():
                        save(batch_in_epoch, epoch, data.train.state_dict() if mid_epoch else None)
                # One process checks its flag every step (free); several agree every preempt_check_every steps.
                check = world == 1 or step % cfg.train.preempt_check_every == 0 or step == total_steps
                preempted = check and preemption.agreed(accelerator)  # sync: all-reduce, only with several
                if step >= total_steps or preempted:
                    stop_state = data.train.state_dict() if mid_epoch else None  # before the pipeline closes
                    break

            epoch_done = batch_in_epoch >= steps_per_epoch
            if epoch_done:
                sampling.end_epoch(accelerator)  # every process: one all-reduce of the epoch's counts
                epoch, start_batch = epoch + 1, 0
            else:
                start_batch = batch_in_epoch
            if epoch_done and cfg.train.eval_every and epoch % cfg.train.eval_every == 0 and step < total_steps:
                with pause():
                    result = sampling.record_eval(step, epoch - 1, evaluate(student, data.val, accelerator, C))
                log.write({"step": step, "epoch": epoch - 1, **result, **cost_fields()})
            if epoch_done and not cfg.train.checkpoint_every:
                with pause():
                    save(start_batch, epoch)
        bar.close()
        if sampling.pending:  # stopped mid-epoch (max_steps, preemption): the counts so far
            sampling.end_epoch(accelerator)

        # --- the end: final checkpoint, then (unless preempted) student weights and evaluation ---------
        # (still under the flag: a signal now lets the end finish instead of killing it half-way)
        latest = ckpt.latest_checkpoint(out)
        if not (latest and latest.name == f"step-{step}"):
            latest = save(start_batch, epoch, stop_state)
        if preempted:
            summary = {
                "step": step,
                "epoch": epoch,
                "preempted": True,
                "signal": preemption.signal_name,
                "checkpoint": str(latest),
                **cost_fields(),
            }
            log.write(summary)
            accelerator.wait_for_everyone()
            return summary
        ckpt.save_final(accelerator, student, out)
        last_epoch = epoch - 1 if start_batch == 0 and epoch > 0 else epoch  # the epoch the final weights end
        result = sampling.record_eval(step, last_epoch, evaluate(student, data.val, accelerator, C))
        summary = {
            "step": step,
            "epoch": epoch,
            "final": True,
            **result,
            "checkpoint": str(latest),
            **cost_fields(),
            "Ft": ledger.Ft,
            "Fs": ledger.Fs,
            "Bs": ledger.Bs,
            "step_ms": 1e3 * train_s / step if step else None,
        }
        if calibration is not None:
            summary.update(k=calibration.k, wall_fraction=summary["step_ms"] / calibration.kd_step_ms)
        if run.teacher is not None:
            t_eval = evaluate(run.teacher, data.val, accelerator)
            summary.update(teacher_top1=t_eval["top1"], teacher_top5=t_eval["top5"])
        log.write(summary)
        accelerator.wait_for_everyone()
        return summary


def _check_resume(cfg: Config, out: Path, student: torch.nn.Module, fingerprint: dict) -> Path | None:
    """Main process, before anything is loaded or written: the disk can hold the checkpoints, and the checkpoint
    to resume from (if any) is intact, was saved by the same kind of run, and holds this (unwrapped) student."""
    need = _checkpoint_bytes(student, cfg.train.keep_checkpoints)
    free = shutil.disk_usage(out).free
    if free < need:
        raise UserError(
            f"out_dir={out}: {free / 2**30:.2f} GiB free, the checkpoints need about {need / 2**30:.2f} GiB"
        )
    path, notes = ckpt.find_resume(cfg.resume, out, fingerprint["world_size"])
    _print(True, notes)
    if path is None:
        return None
    saved = ckpt.load_trainer_state(path, 0)["fingerprint"]
    differs = [f"{k}={saved[k]!r} (this run: {fingerprint.get(k)!r})" for k in saved if saved[k] != fingerprint.get(k)]
    if differs and not cfg.resume_force:
        raise UserError(
            f"resume={cfg.resume}: {path} was saved with {', '.join(differs)}; "
            "resume_force=true resumes anyway (the optimizer keeps its saved settings)"
        )
    own = {k: tuple(v.shape) for k, v in student.state_dict().items()}  # the unwrapped module's names
    mismatch = shapes_mismatch(own, ckpt.saved_model_shapes(path))
    if mismatch:
        raise UserError(
            f"resume={cfg.resume}: {path} holds another student than model.student={cfg.model.student}: {mismatch}"
        )
    return path


def optimizer_identity(cfg: Config) -> dict:
    """The optimizer settings a resume cannot change: Accelerate restores the saved param groups (lr, momentum,
    weight decay), so a new value in the config would be ignored while config.yaml claimed it."""
    o = cfg.optim
    return {f"optim.{k}": getattr(o, k) for k in ("lr", "momentum", "nesterov", "weight_decay", "decay_norm_and_bias")}


def data_identity(data) -> dict:
    """What a resume needs to find unchanged: how many training samples, which classes, which files (a
    digest of the sorted relative paths, or of the labels for in-memory sets)."""
    h = hashlib.sha1("\n".join(data.classes).encode())
    index = getattr(data.train, "index", None)
    if index is not None:  # a folder: the files themselves (a dataset that changed between runs is refused)
        root = str(data.root.resolve()) + "/"
        for f in index.files:
            h.update((f[len(root) :] if f.startswith(root) else f).encode() + b"\n")
        n = len(index.files)
    else:
        labels = data.train.labels
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else labels
        h.update(labels.tobytes())
        n = len(labels)
    return {"train_samples": n, "data_digest": h.hexdigest()[:16]}


@contextmanager
def _stop_cleanly(out: Path, current_step):
    """Errors of the loop as one line that names the step and the last complete checkpoint."""
    try:
        yield
    except NonFiniteError:
        raise NonFiniteError(
            f"non-finite loss or gradient at step {current_step() + 1}: the weights were not "
            f"updated; last complete checkpoint: {ckpt.latest_checkpoint(out) or 'none'}"
        ) from None
    except RuntimeError as e:
        if not is_collective_timeout(e) or isinstance(e, RunStopped):
            raise
        raise PeerTimeoutError(
            f"step {current_step() + 1}: another process did not answer within the collective "
            "timeout (train.step_timeout_min): it is stuck or died; last complete checkpoint: "
            f"{ckpt.latest_checkpoint(out) or 'none'}"
        ) from None


def _print(enabled: bool, lines: list[str]) -> None:
    for line in lines if enabled else ():
        print(line)


def _checkpoint_bytes(student: torch.nn.Module, keep: int) -> int:
    """Rough disk need: weights + optimizer state (x3) for each kept checkpoint, one being written, the final."""
    params = sum(p.numel() * p.element_size() for p in student.parameters())
    return params * 3 * (keep + 1) + params


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
