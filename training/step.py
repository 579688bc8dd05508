"""One training step, split into its phases: select → teacher → student forward (loss) → backward → optimizer.

The trainer calls the whole step; `bench` and `profile` call the same object, phase by phase when they need
to time them, so what they measure is exactly what training runs.

The rows a step trains on are the Selection's main rows `x` (KD, optional mixed-label CE, optional AT/SP)
followed by its optional `extra` view (TL: KL only). Teacher and student are each called ONCE on them (main
rows first), so DDP sees one forward per backward. With an extra view the student's own forward runs on each
view separately within that call (`training.views`), as the TL authors' two forwards: BatchNorm normalizes
the clean batch and the view each with its own statistics and updates its running statistics twice. The
teacher (eval mode: running statistics, no batch interaction) runs once on both, with the same logits as the
authors' two teacher forwards. `step_counts` turns a Selection into the images each network processed, for
the cost ledger.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unixkd.selection import LossWeights, Selection, SelectsRows

from .features import FeatureDistill, capture, no_capture
from .guards import NonFiniteError, all_finite
from .losses import distill_loss, kd_loss
from .views import SeparateViews


@dataclass
class StepCounts:
    """Images each network processed in one step on this process (for the cost ledger)."""

    batch: int  # N
    teacher: int  # training rows it labelled + pool rows it scored (0 without a teacher)
    student_fwd: int  # scoring pass(es) + training rows
    student_bwd: int  # training rows


def step_counts(N: int, sel, has_teacher: bool) -> StepCounts:
    """What one step with Selection `sel` ran: the no-grad scoring passes, then the forward on x (+ extra).

    The teacher labels the main rows and the extra view, except extra rows whose logits the selector
    already computed (pick: counted in `teacher_scored` instead, never twice).
    """
    rows = sel.x.shape[0]
    extra = 0 if sel.extra is None else sel.extra.shape[0]
    teacher = 0
    if has_teacher:
        teacher = rows + (extra if sel.extra_teacher_logits is None else 0) + sel.teacher_scored
    return StepCounts(batch=N, teacher=teacher, student_fwd=sel.scored + rows + extra, student_bwd=rows + extra)


@dataclass
class TeacherOut:
    """The teacher's view of the training rows: logits of the main rows, then of the extra view."""

    logits: Tensor
    features: list[Tensor] = field(default_factory=list)  # feature-loss layers (empty without AT/SP)


class DistillStep:
    def __init__(
        self,
        accelerator,
        student,
        teacher,
        optimizer,
        scheduler,
        selector: SelectsRows,
        *,
        temperature: float,
        kd_weight: float,
        ce_weight: float,
        nonfinite: str = "stop",
        features: FeatureDistill | None = None,
    ):
        self.accelerator = accelerator
        self.student = student  # as prepared by Accelerate (DDP-wrapped on several processes)
        self.scorer = accelerator.unwrap_model(student)  # the scoring forward needs no DDP bookkeeping
        self.student_call = student  # the training forward (torch.compile'd with train.compile_student)
        self.views = SeparateViews(self.scorer)  # a TL step: the student's forward once per view, in one call
        self.teacher = teacher
        self.teacher_call = teacher  # how the teacher's forward runs (training.fastpath.TeacherForward on CUDA)
        self.optimizer, self.scheduler, self.selector = optimizer, scheduler, selector
        self.temperature, self.kd_weight, self.ce_weight = temperature, kd_weight, ce_weight
        self.nonfinite = nonfinite  # stop | skip | off
        self.skipped = 0  # optimizer steps skipped for a non-finite loss/gradient (nonfinite=skip)
        self.features = features if teacher is not None else None
        self.on_select: Callable | None = None  # called as on_select(labels, sel) (sampling analytics)

    # --- the phases ------------------------------------------------------------------------------------
    def select(self, images: Tensor, labels: Tensor) -> Selection:
        """Which rows the teacher sees (UNIX: no-grad scoring forward on all N + sort + mix)."""
        with self.accelerator.autocast():
            if self.selector.needs_teacher:  # pick: the teacher scores the pool
                return self.selector.select(images, labels, self.scorer, teacher=self.teacher)
            return self.selector.select(images, labels, self.scorer)

    @torch.no_grad()
    def teacher_forward(self, sel: Selection) -> TeacherOut | None:
        if self.teacher is None:
            return None
        x = sel.x
        if sel.extra is not None and sel.extra_teacher_logits is None:
            x = torch.cat([sel.x, sel.extra])
        with self.accelerator.autocast(), self._tap(self.teacher, "teacher") as feats:
            logits = self.teacher_call(x)
        if sel.extra_teacher_logits is not None:  # labelled during selection: reused, not recomputed
            logits = torch.cat([logits, sel.extra_teacher_logits.to(logits.dtype)])
        return TeacherOut(logits, list(feats))

    def student_loss(self, sel: Selection, t: TeacherOut | Tensor | None) -> Tensor:
        if isinstance(t, Tensor):
            t = TeacherOut(t)
        k = sel.x.shape[0]
        if sel.extra is None:
            x, views = sel.x, contextlib.nullcontext()
        else:  # one call (one DDP forward), the module's forward on the clean rows, then on the view
            x, views = torch.cat([sel.x, sel.extra]), self.views.split((k, sel.extra.shape[0]))
        w = sel.weights or LossWeights(ce=self.ce_weight, kd=self.kd_weight, extra_kd=0.0)
        with self.accelerator.autocast():
            with self._tap(self.scorer, "student") as feats, views:
                s_logits = self.student_call(x)
            t_logits = None if t is None else t.logits
            loss = distill_loss(
                s_logits[:k],
                None if t is None else t_logits[:k],
                sel,
                temperature=self.temperature,
                kd_weight=w.kd,
                ce_weight=w.ce,
            )
            if sel.extra is not None and t is not None and w.extra_kd > 0:  # TL: KL only on the extra view
                loss = loss + w.extra_kd * kd_loss(s_logits[k:], t_logits[k:], self.temperature)
            if self.features is not None and t is not None:  # AT / SP on the main rows
                loss = loss + self.features.loss(feats, t.features, k)
        return loss

    def backward(self, loss: Tensor) -> None:
        self.accelerator.backward(loss)

    def optimizer_step(self, loss: Tensor | None = None) -> None:
        """SGD step and schedule; with a loss given, first check it and the gradients (`nonfinite`)."""
        if loss is not None and self.nonfinite != "off":
            # fp16: an overflowing gradient is the grad scaler's business (it skips that step and lowers the
            # scale, which happens routinely in the first steps); only the loss itself is checked then.
            scaled = getattr(self.accelerator, "scaler", None) is not None
            finite = all_finite(loss, () if scaled else self.student.parameters())
            if self.nonfinite == "stop":
                # No host sync: on CUDA this asserts on the device, ahead of the optimizer's kernels in
                # stream order, so the weights are never updated; on CPU it raises right here.
                try:
                    torch._assert_async(finite, "non-finite loss or gradient")
                except RuntimeError as e:
                    raise NonFiniteError("non-finite loss or gradient") from e
            elif not finite.item():  # sync: "skip" pays one host read per step
                self.skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                return
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # --- all of it -------------------------------------------------------------------------------------
    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, StepCounts]:
        sel = self.select(images, labels)
        if self.on_select is not None:
            self.on_select(labels, sel)
        t_out = self.teacher_forward(sel)
        loss = self.student_loss(sel, t_out)
        self.backward(loss)
        self.optimizer_step(loss)
        return loss.detach(), step_counts(images.shape[0], sel, self.teacher is not None)

    def _tap(self, model, side: str):
        if self.features is None:
            return no_capture()
        layers = self.features.teacher_layers if side == "teacher" else self.features.student_layers
        return capture(model, layers)
