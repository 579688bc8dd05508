"""Per-image uncertainty of the student's prediction (docs/algorithms.md §2 step 2): higher = more uncertain."""

from __future__ import annotations

import torch
from torch import Tensor

CRITERIA = ("entropy", "confidence", "margin")


def check_criterion(criterion: str) -> None:
    """One-line ValueError unless `criterion` is one of CRITERIA."""
    if criterion not in CRITERIA:
        raise ValueError(f"selection.criterion={criterion!r} is not one of {', '.join(CRITERIA)}")


def uncertainty(logits: Tensor, criterion: str = "entropy") -> Tensor:
    """Uncertainty of each row of `logits` [N, classes] -> float32 [N], from p = softmax(logits) (T = 1).

    entropy:    -sum p log p, with log p from log_softmax (finite when p underflows to 0,
                where the authors' p * log(p) gives NaN)
    confidence: 1 - max p
    margin:     -(p_top1 - p_top2)
    """
    check_criterion(criterion)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, classes], got shape {tuple(logits.shape)}")
    log_p = torch.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    if criterion == "entropy":
        # p == 0 only where log_p == -inf (a -inf logit): count 0 * log 0 as 0, not NaN.
        return -torch.where(p > 0, p * log_p, 0.0).sum(-1)
    if criterion == "confidence":
        return 1.0 - p.amax(-1)
    if logits.shape[-1] < 2:
        raise ValueError(f"criterion='margin' needs at least 2 classes, got {logits.shape[-1]}")
    top2 = p.topk(2, dim=-1).values
    return -(top2[:, 0] - top2[:, 1])
