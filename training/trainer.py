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
    set_seed(cfg.seed)  # identical model init on every process
    loop = _Loop(cfg, accelerator, out)  # data, student, teacher, selector, cost ledger, sampling log
    loop.resume_or_calibrate()  # the checkpoint's position, or a fresh start; k from a wall-clock calibration
    loop.claim_folder(record)  # every check passed: from here on the folder describes this run
    return loop.train()  # the epochs, then the end: final checkpoint, weights, evaluation


class _Loop:
    """One training run's parts and the state its loop updates as it goes.

    The position (`step`, `epoch`, `start_batch`) and the training-step time `train_s` come from the checkpoint on
    resume; `t_log`, `steps_since_log`, `paused` and `loss_sum` cover the interval since the last metrics row.
    """

    def __init__(self, cfg: Config, accelerator: Accelerator, out: Path):
        self.cfg, self.accelerator, self.out = cfg, accelerator, out
        self.main = accelerator.is_main_process
        self.world = accelerator.num_processes
        self.data = data = build_data(cfg, accelerator)
        self.steps_per_epoch = len(data.train)
        self.num_classes = cfg.model.num_classes or len(data.classes)
        self.run = build_run(cfg, accelerator, self.num_classes, self.steps_per_epoch)
        self.sampling = SamplingLog(
            out,
            data.classes,
            accelerator.device,
            write=self.main,
            loader=data.train,
            count_images=cfg.train.count_images,
        )
        self.run.step.on_select = self.sampling.observe  # which classes (and images) each step trains on
        self.fingerprint = {
            "world_size": accelerator.num_processes,
            "batch_size": cfg.data.batch_size,
            "seed": cfg.seed,
            "method": cfg.selection.method,
            "student": cfg.model.student,
            **data_identity(data),
            **optimizer_identity(cfg),
        }
        self.step, self.epoch, self.start_batch, self.data_state, self.train_s = 0, 0, 0, None, 0.0
        self.resume_from: Path | None = None
        self.calibration = None
        total_steps = self.steps_per_epoch * cfg.train.epochs
        self.total_steps = min(total_steps, cfg.train.max_steps) if cfg.train.max_steps else total_steps

    def resume_or_calibrate(self) -> None:
        """Check the checkpoint to resume from (if any), calibrate k (wall-clock budget), restore the position."""
        cfg, accelerator, run = self.cfg, self.accelerator, self.run
        student = run.student
        resume_from = on_main(
            accelerator, lambda: _check_resume(cfg, self.out, accelerator.unwrap_model(student), self.fingerprint)
        )
        self.resume_from = resume_from
        state = ckpt.load_trainer_state(resume_from, accelerator.process_index) if resume_from is not None else None
        if wallclock.enabled(cfg):  # k from the checkpoint's calibration, or measured now on this run's own step
            saved = None if state is None else state.get("wallclock")
            if state is not None and saved is None and not cfg.resume_force:
                raise UserError(
                    f"resume={cfg.resume}: {resume_from} was saved by a run without a wall-clock calibration, this "
                    "run asks for selection.budget_convention=wallclock; resume_force=true calibrates now"
                )
            self.calibration = wallclock.for_run(cfg, accelerator, run, self.num_classes, saved)
            selector = make_selector(cfg, accelerator, cfg.selection.method, run.ledger, student, k=self.calibration.k)
            run.selector = run.step.selector = selector
        if resume_from is not None:
            accelerator.load_state(str(resume_from))
            run.selector.load_state_dict(state["selector"])
            run.ledger.load_state_dict(state["ledger"])
            self.sampling.load_state_dict(state.get("sampling"))
            self.step, self.epoch, self.start_batch = state["step"], state["epoch"], state["batch_in_epoch"]
            self.train_s = state.get("train_s", 0.0)  # time in training steps so far (evaluations and saves left out)
            self.data_state = state["data"]  # DALI's reader position and augmentation RNG (None at an epoch boundary)

    def claim_folder(self, record: dict) -> None:
        """Main process: set later checkpoints aside, cut metrics.jsonl to this step, write config and status."""
        out, step, resume_from = self.out, self.step, self.resume_from
        if self.main:  # every check passed: from here on the folder describes this run
            aside, names = ckpt.set_aside_after(out, step) if resume_from is not None else (None, [])
            if aside is not None:
                print(
                    f"checkpoints after step {step} ({', '.join(names)}) moved to {aside}: this run continues from "
                    f"step {step}; remove that folder when you no longer need it"
                )
            dropped = run_dir.truncate_metrics(out, step)
            save_config(self.cfg, out / run_dir.CONFIG)
            if self.calibration is not None:
                atomic_write_json(out / wallclock.RECORD, self.calibration.state_dict(), indent=1)
            run_dir.write_status(out, "running", step=step)
            record["started"] = True
            if resume_from is not None:
                print(
                    f"resumed from {resume_from} at step {step} (epoch {self.epoch}, batch {self.start_batch})"
                    + (f"; dropped {dropped} metrics.jsonl row(s) logged after it" if dropped else "")
                )
        accelerator = self.accelerator
        on_main(accelerator, lambda: trackers.start(accelerator, self.cfg, step, resumed=resume_from is not None))

    def train(self) -> dict:
        """Train epoch after epoch until total_steps, the last epoch or a preemption; then the end."""
        cfg, accelerator = self.cfg, self.accelerator
        self.log = run_dir.MetricsLog(
            self.out / run_dir.METRICS, self.main, mirror=lambda row: trackers.log(accelerator, row)
        )
        self.bar = _progress(self.total_steps, self.step, enabled=self.main and cfg.train.progress)
        self.loss_sum = torch.zeros((), device=accelerator.device)
        self.t_log, self.steps_since_log, self.paused = time.perf_counter(), 0, 0.0
        self.stop_state = None  # the loader's state when the run stops mid-epoch (max_steps, preemption)
        self.preempted = False
        self.run.student.train()
        with (
            PreemptionFlag(repeat_aborts=self.world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ) as preemption,
            _stop_cleanly(self.out, lambda: self.step),
        ):
            while self.step < self.total_steps and self.epoch < cfg.train.epochs and not self.preempted:
                self.run_epoch(preemption)
            self.bar.close()
            if self.sampling.pending:  # stopped mid-epoch (max_steps, preemption): the counts so far
                self.sampling.end_epoch(accelerator)
            # (still under the flag: a signal now lets the end finish instead of killing it half-way)
            return self.finish(preemption)

    def run_epoch(self, preemption: PreemptionFlag) -> None:
        """The steps from `start_batch` to the epoch's end (or the run's stop), then the epoch's end."""
        cfg, data, world, ledger = self.cfg, self.data, self.world, self.run.ledger
        if self.data_state is not None and self.data_state["dali"]:  # continue the epoch exactly: samples and crops
            data.train.load_state_dict(self.data_state)
            self.data_state = None
        else:
            data.train.set_epoch(self.epoch, start_batch=self.start_batch)
        self.sampling.set_epoch(self.epoch, self.start_batch)
        batch_in_epoch = self.start_batch
        for images, labels in data.train:
            loss, n = self.run.step(images, labels)  # select -> teacher on k rows -> student -> SGD step
            ledger.add_step(
                batch=n.batch * world,
                teacher=n.teacher * world,
                student_fwd=n.student_fwd * world,
                student_bwd=n.student_bwd * world,
            )
            self.loss_sum += loss  # stays on the device: read once per log_every steps
            self.step, batch_in_epoch, self.steps_since_log = (
                self.step + 1,
                batch_in_epoch + 1,
                self.steps_since_log + 1,
            )
            self.bar.update(1)

            if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                self.log_row(n.batch)
            mid_epoch = batch_in_epoch < self.steps_per_epoch
            if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                # sync: a checkpoint copies weights, optimizer state and counts to the host
                with self.pause():
                    self.save(batch_in_epoch, self.epoch, data.train.state_dict() if mid_epoch else None)
            # One process checks its flag every step (free); several agree every preempt_check_every steps.
            check = world == 1 or self.step % cfg.train.preempt_check_every == 0 or self.step == self.total_steps
            self.preempted = check and preemption.agreed(self.accelerator)  # sync: all-reduce, only with several
            if self.step >= self.total_steps or self.preempted:
                self.stop_state = data.train.state_dict() if mid_epoch else None  # before the pipeline closes
                break
        self.end_epoch(batch_in_epoch)

    def end_epoch(self, batch_in_epoch: int) -> None:
        """A finished epoch: its sampling counts, then the evaluation and checkpoint it is due; else the resume point."""
        cfg, step = self.cfg, self.step
        epoch_done = batch_in_epoch >= self.steps_per_epoch
        if epoch_done:
            self.sampling.end_epoch(self.accelerator)  # every process: one all-reduce of the epoch's counts
            self.epoch, self.start_batch = self.epoch + 1, 0
        else:
            self.start_batch = batch_in_epoch
        epoch = self.epoch
        if epoch_done and cfg.train.eval_every and epoch % cfg.train.eval_every == 0 and step < self.total_steps:
            with self.pause():
                result = self.sampling.record_eval(step, epoch - 1, self.evaluate_student())
            self.log.write({"step": step, "epoch": epoch - 1, **result, **self.cost_fields()})
        if epoch_done and not cfg.train.checkpoint_every:
            with self.pause():
                self.save(self.start_batch, epoch)

    def log_row(self, batch: int) -> None:
        """One metrics.jsonl row for the steps since the last one (`batch`: this process's rows per step)."""
        accelerator, calibration, steps = self.accelerator, self.calibration, self.steps_since_log
        mean_loss = accelerator.reduce(self.loss_sum, reduction="mean").item() / steps  # sync
        dt = time.perf_counter() - self.t_log
        stepping = max(dt - self.paused, 1e-9)  # the interval's time in steps (data wait included)
        self.train_s += stepping
        row = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": mean_loss,
            "lr": self.run.scheduler.get_last_lr()[0],
            "img_per_s": steps * batch * self.world / dt,
            "step_ms": 1e3 * stepping / steps,
            **self.cost_fields(),
        }
        if calibration is not None:  # measured step time against KD's predicted one
            row["wall_fraction"] = row["step_ms"] / calibration.kd_step_ms
        if self.run.step.skipped:
            row["skipped_steps"] = self.run.step.skipped
        self.log.write(row)
        postfix = {"loss": f"{mean_loss:.3f}", "img_s": f"{row['img_per_s']:.0f}"}
        postfix["cost"] = f"{row['cost_fraction']:.3f}"
        if calibration is not None:
            postfix["wall"] = f"{row['wall_fraction']:.3f}"
        self.bar.set_postfix(**postfix)
        self.loss_sum.zero_()
        self.t_log, self.steps_since_log, self.paused = time.perf_counter(), 0, 0.0

    def finish(self, preemption: PreemptionFlag) -> dict:
        """The end: final checkpoint, then (unless preempted) student weights and evaluation; returns the summary."""
        accelerator, step, epoch, ledger, calibration = (
            self.accelerator,
            self.step,
            self.epoch,
            self.run.ledger,
            self.calibration,
        )
        latest = ckpt.latest_checkpoint(self.out)
        if not (latest and latest.name == f"step-{step}"):
            latest = self.save(self.start_batch, epoch, self.stop_state)
        if self.preempted:
            summary = {
                "step": step,
                "epoch": epoch,
                "preempted": True,
                "signal": preemption.signal_name,
                "checkpoint": str(latest),
                **self.cost_fields(),
            }
            self.log.write(summary)
            accelerator.wait_for_everyone()
            return summary
        ckpt.save_final(accelerator, self.run.student, self.out)
        last_epoch = epoch - 1 if self.start_batch == 0 and epoch > 0 else epoch  # the epoch the final weights end
        result = self.sampling.record_eval(step, last_epoch, self.evaluate_student())
        summary = {
            "step": step,
            "epoch": epoch,
            "final": True,
            **result,
            "checkpoint": str(latest),
            **self.cost_fields(),
            "Ft": ledger.Ft,
            "Fs": ledger.Fs,
            "Bs": ledger.Bs,
            "step_ms": 1e3 * self.train_s / step if step else None,
        }
        if calibration is not None:
            summary.update(k=calibration.k, wall_fraction=summary["step_ms"] / calibration.kd_step_ms)
        if self.run.teacher is not None:
            t_eval = evaluate(self.run.teacher, self.data.val, accelerator)
            summary.update(teacher_top1=t_eval["top1"], teacher_top5=t_eval["top5"])
        self.log.write(summary)
        accelerator.wait_for_everyone()
        return summary

    def evaluate_student(self) -> dict:
        return evaluate(self.run.student, self.data.val, self.accelerator, len(self.data.classes))

    def save(self, batch_in_epoch: int, epoch_: int, loader_state: dict | None = None) -> Path:
        state = {
            "step": self.step,
            "epoch": epoch_,
            "batch_in_epoch": batch_in_epoch,
            "fingerprint": self.fingerprint,
            "selector": self.run.selector.state_dict(),
            "ledger": self.run.ledger.state_dict(),
            "data": loader_state,
            "sampling": self.sampling.state_dict(),
            "wallclock": None if self.calibration is None else self.calibration.state_dict(),
            # + the steps since the last row
            "train_s": self.train_s + max(0.0, time.perf_counter() - self.t_log - self.paused),
        }
        return ckpt.save_checkpoint(self.accelerator, self.out, self.step, state, keep=self.cfg.train.keep_checkpoints)

    def cost_fields(self) -> dict:  # cost_fraction: paper convention (B_s = F_s); *_measured: counted B_s
        fields = {**self.run.ledger.metrics(), "world_size": self.world, "train_s": self.train_s}
        if self.calibration is not None:
            fields["wall_fraction_predicted"] = self.calibration.predicted_fraction
        return fields

    @contextmanager
    def pause(self):  # an evaluation or a checkpoint save: not training-step time (step_ms, train_s, wall_fraction)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - t0


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
