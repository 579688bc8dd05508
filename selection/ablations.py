"""The UNIX paper's Table 5 ablations: each drops one ingredient of UNIX (docs/algorithms.md §2, "Baselines and ablations").

    uncertainty   top-k by uncertainty, clean images            (UNIX without the mixup)
    mixup         k random images, plain mixup m = λ            (UNIX without the uncertainty)
    nonadaptive   top-k by uncertainty, plain mixup m = λ       (UNIX without the correction factor c_r)

Same draws and same row conventions as UNIX: λ ~ Beta(α, α) once per step, then the partner permutation
over the ORIGINAL batch; kept row r is x[base[r]] mixed with x[perm[r]], so `.index` holds the base rows
and `y_partner` the partners' labels for the optional mixed-label CE.
"""

from __future__ import annotations

import numpy as np
import torch

from .selectors import (
    Selection,
    Selector,
    check_k,
    check_positive,
    check_score_mode,
    register,
    resolve_k,
    score,
)
from .uncertainty import check_criterion, uncertainty
from .unix import mix


def top_uncertain(logits: torch.Tensor, k: int, criterion: str) -> torch.Tensor:
    """Rows of the k most uncertain images, most uncertain first (ties by row, as in unix_mix)."""
    return torch.argsort(uncertainty(logits, criterion), descending=True, stable=True)[:k]


def plain_mix(images, labels, base, partner, lam: float) -> Selection:
    """Rows x[base[r]] mixed with x[partner[r]] at the same weight m = λ for all r (plain mixup)."""
    m = torch.full((base.shape[0],), lam, dtype=torch.float32, device=images.device)
    y = y_partner = None
    if labels is not None:
        y, y_partner = labels[base], labels[partner]
    return Selection(x=mix(images, base, partner, m), y=y, y_partner=y_partner, m=m, index=base, scored=0)


@register("uncertainty")
class UncertaintySelector(Selector):
    """Top-k by the student's uncertainty, clean (no mixup). One scoring forward on all N, no RNG draws."""

    scores_batch = True

    def __init__(self, k, criterion: str = "entropy", score_mode: str = "train", *, seed: int = 0):
        super().__init__(seed=seed)
        check_k(k)
        check_criterion(criterion)
        check_score_mode(score_mode)
        self.k, self.criterion, self.score_mode = k, criterion, score_mode

    def select(self, images, labels, student):
        N = images.shape[0]
        logits = score(student, images, self.score_mode)
        sel = self._clean(images, labels, top_uncertain(logits, resolve_k(self.k, N), self.criterion))
        sel.scored = N
        return sel


@register("mixup")
class MixupSelector(Selector):
    """k random images (batch order), each mixed with its partner at m = λ. No scoring forward.

    Draws per step: λ, the partner permutation, then the random subset.
    """

    def __init__(self, k, alpha, *, seed: int = 0):
        super().__init__(seed=seed)
        check_k(k)
        check_positive("alpha", alpha)
        self.k, self.alpha = k, alpha

    def select(self, images, labels, student):
        N = images.shape[0]
        k = resolve_k(self.k, N)
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = self.rng.permutation(N)
        base = np.sort(self.rng.permutation(N)[:k])
        return plain_mix(images, labels, self._device_index(base, images), self._device_index(perm[:k], images), lam)


@register("nonadaptive")
class NonAdaptiveSelector(Selector):
    """Top-k by uncertainty, mixed with the partner at m = λ for every row (no correction factor c_r)."""

    scores_batch = True

    def __init__(self, k, alpha, criterion: str = "entropy", score_mode: str = "train", *, seed: int = 0):
        super().__init__(seed=seed)
        check_k(k)
        check_positive("alpha", alpha)
        check_criterion(criterion)
        check_score_mode(score_mode)
        self.k, self.alpha, self.criterion, self.score_mode = k, alpha, criterion, score_mode

    def select(self, images, labels, student):
        N = images.shape[0]
        k = resolve_k(self.k, N)
        logits = score(student, images, self.score_mode)
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = self._device_index(self.rng.permutation(N), images)
        sel = plain_mix(images, labels, top_uncertain(logits, k, self.criterion), perm[:k], lam)
        sel.scored = N
        return sel
