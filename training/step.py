"""One training step, split into its phases: select → teacher → student forward (loss) → backward → optimizer.

The trainer calls the whole step; `bench` and `profile` call the same object, phase by phase when they need
to time them, so what they measure is exactly what training runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .guards import NonFiniteError, all_finite
from .losses import distill_loss


@dataclass
class StepCounts:
    """Images each network processed in one step on this process (for the cost ledger)."""

    batch: int  # N
    teacher: int  # k (0 without a teacher)
    student_fwd: int  # scoring pass + k
    student_bwd: int  # k


class DistillStep:
    def __init__(self, accelerator, student, teacher, optimizer, scheduler, selector, *, temperature: float,
                 kd_weight: float, ce_weight: float, nonfinite: str = "stop"):
        self.accelerator = accelerator
        self.student = student  # as prepared by Accelerate (DDP-wrapped on several processes)
        self.scorer = accelerator.unwrap_model(student)  # the scoring forward needs no DDP bookkeeping
        self.teacher = teacher
        self.optimizer, self.scheduler, self.selector = optimizer, scheduler, selector
        self.temperature, self.kd_weight, self.ce_weight = temperature, kd_weight, ce_weight
        self.nonfinite = nonfinite  # stop | skip | off
        self.skipped = 0  # optimizer steps skipped for a non-finite loss/gradient (nonfinite=skip)

    # --- the phases ------------------------------------------------------------------------------------
    def select(self, images: Tensor, labels: Tensor):
        """Which rows the teacher sees (UNIX: no-grad scoring forward on all N + sort + mix)."""
        with self.accelerator.autocast():
            return self.selector.select(images, labels, self.scorer)

    @torch.no_grad()
    def teacher_forward(self, sel) -> Tensor | None:
        if self.teacher is None:
            return None
        with self.accelerator.autocast():
            return self.teacher(sel.x)

    def student_loss(self, sel, t_logits: Tensor | None) -> Tensor:
        with self.accelerator.autocast():
            s_logits = self.student(sel.x)
            return distill_loss(s_logits, t_logits, sel, temperature=self.temperature, kd_weight=self.kd_weight,
                                ce_weight=self.ce_weight)

    def backward(self, loss: Tensor) -> None:
        self.accelerator.backward(loss)

    def optimizer_step(self, loss: Tensor | None = None) -> None:
        """SGD step and schedule; with a loss given, first check it and the gradients (`nonfinite`)."""
        if loss is not None and self.nonfinite != "off":
            finite = all_finite(loss, self.student.parameters())
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
        t_logits = self.teacher_forward(sel)
        loss = self.student_loss(sel, t_logits)
        self.backward(loss)
        self.optimizer_step(loss)
        k = sel.x.shape[0]
        counts = StepCounts(batch=images.shape[0], teacher=k if self.teacher is not None else 0,
                            student_fwd=sel.scored + k, student_bwd=k)
        return loss.detach(), counts
