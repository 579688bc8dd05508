"""Distillation losses (docs/algorithms.md §2 step 10): KD = KL(softmax(t/T) || softmax(s/T))·T², and CE with mixed labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton's KD loss, batchmean, scaled by T² so its gradient does not shrink with T. Float32 math."""
    T = temperature
    log_p_s = F.log_softmax(student_logits.float() / T, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def mixed_ce(student_logits: Tensor, y: Tensor, y_partner: Tensor | None = None, m: Tensor | None = None) -> Tensor:
    """CE on (possibly mixed) rows: per row (1 − m)·CE(s, y) + m·CE(s, y_partner), averaged over rows."""
    logits = student_logits.float()
    ce = F.cross_entropy(logits, y, reduction="none")
    if m is not None:
        ce = (1 - m) * ce + m * F.cross_entropy(logits, y_partner, reduction="none")
    return ce.mean()


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    sel,
    *,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
) -> Tensor:
    """The training objective for one step: kd_weight·KD + ce_weight·CE (CE only when there is no teacher)."""
    loss = torch.zeros((), device=student_logits.device)
    if teacher_logits is not None and kd_weight > 0:
        loss = loss + kd_weight * kd_loss(student_logits, teacher_logits, temperature)
    if ce_weight > 0:
        loss = loss + ce_weight * mixed_ce(student_logits, sel.y, sel.y_partner, sel.m)
    return loss
