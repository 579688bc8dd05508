"""TL-augmentation (docs/algorithms.md §3): an extra teacher-labelled mixed view of the batch, and picking from a pool of views.

The step trains on the clean batch with (1 − α)·CE + α·KD (α = `tl_alpha`, 0.9) and on the extra view x'
with α·KL only: the teacher labels x', no mixed hard labels. This follows the authors' code, where the
loss is γ·CE(clean) + α·(KL(clean) + KL(x')) with γ = 0.1, α = 0.9.

    tlmixup        x' = λ·x + (1 − λ)·x[perm]                (perm: any permutation, as the authors' mixup)
    tlcutmix       x' = x with one box pasted from x[perm]   (perm: a derangement, no image with itself)
    tlcutmix_pick  `pool` CutMix views per image; teacher and/or student score them without grad;
                   train on the n_pick with the highest d (kl: KL(p_t ‖ p_s) at temperature T; or the
                   teacher's / the student's entropy). The teacher logits of the picked rows are reused.

λ ~ Beta(α_mix, α_mix) (`selection.alpha`; the paper: 1.0), one λ and one box per view of the batch. A
CutMix box follows CutMix: side ratio sqrt(1 − λ), centre uniform over the image, clipped at the border,
λ then corrected to the kept area. Pure functions first; randomness is drawn by the selectors' own RNG.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .selectors import (
    LossWeights,
    Selection,
    Selector,
    check_n_pick,
    check_pick_criterion,
    check_pool,
    check_positive,
    check_score_mode,
    check_tl_alpha,
    register,
    resolve_n_pick,
    score,
)
from .uncertainty import uncertainty
from .unix import mix

# ---- pure functions ----------------------------------------------------------------------------------


def cutmix_box(H: int, W: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2): CutMix's box of side ratio sqrt(1 − λ) centred at (cy, cx), clipped to the image."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam!r} must be in [0, 1]")
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(H * cut), int(W * cut)
    y1, y2 = min(max(cy - cut_h // 2, 0), H), min(max(cy + cut_h // 2, 0), H)
    x1, x2 = min(max(cx - cut_w // 2, 0), W), min(max(cx + cut_w // 2, 0), W)
    return y1, y2, x1, x2


def cutmix(x: Tensor, partner: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """x [N, C, H, W] with the box region of row r replaced by that of row partner[r]; outside it, x as is."""
    y1, y2, x1, x2 = box
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[partner, :, y1:y2, x1:x2]
    return out


def mixup(x: Tensor, perm: Tensor, lam: float) -> Tensor:
    """λ·x + (1 − λ)·x[perm], blended in float32 (selection.unix.mix with base = every row, m = 1 − λ)."""
    N = x.shape[0]
    rows = torch.arange(N, device=x.device)
    return mix(x, rows, perm, torch.full((N,), 1.0 - lam, dtype=torch.float32, device=x.device))


def derangement(rng: np.random.Generator, N: int) -> np.ndarray:
    """A uniformly random permutation of range(N) with no fixed point (rejection, ~e draws on average)."""
    if N < 2:
        raise ValueError(f"a CutMix partner that is not the image itself needs a batch of N >= 2, got N={N}")
    rows = np.arange(N)
    while True:
        perm = rng.permutation(N)
        if not (perm == rows).any():
            return perm


def pick_scores(
    teacher_logits: Tensor | None, student_logits: Tensor | None, criterion: str, temperature: float
) -> Tensor:
    """d per pool row, float32 [P]: kl = KL(softmax(t/T) ‖ softmax(s/T)); teacher_/student_entropy at T = 1."""
    check_pick_criterion(criterion)
    if criterion == "teacher_entropy":
        return uncertainty(teacher_logits, "entropy")
    if criterion == "student_entropy":
        return uncertainty(student_logits, "entropy")
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)


def pick(d: Tensor, n_pick: int) -> Tensor:
    """Rows of the n_pick highest d, highest first; ties keep pool order (so equal d picks the first rows)."""
    return torch.argsort(d, descending=True, stable=True)[:n_pick]


# ---- selectors ---------------------------------------------------------------------------------------


class TLSelector(Selector):
    """The clean batch (all N rows, KD + CE at 1 − α / α) plus one extra view built by `view`."""

    def __init__(self, alpha, tl_alpha: float = 0.9, *, seed: int = 0):
        super().__init__(seed=seed)
        check_positive("alpha", alpha)
        check_tl_alpha(tl_alpha)
        self.alpha, self.tl_alpha = alpha, tl_alpha

    def loss_weights(self) -> LossWeights:
        a = float(self.tl_alpha)
        return LossWeights(ce=1.0 - a, kd=a, extra_kd=a)

    def view(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def cutmix_view(self, images: Tensor) -> Tensor:
        """Draws λ, the box centre and a derangement partner; returns the CutMix view of the whole batch."""
        N, H, W = images.shape[0], images.shape[-2], images.shape[-1]
        lam = float(self.rng.beta(self.alpha, self.alpha))
        cy, cx = int(self.rng.integers(H)), int(self.rng.integers(W))
        partner = self._device_index(derangement(self.rng, N), images)
        return cutmix(images, partner, cutmix_box(H, W, lam, cy, cx))

    def _selection(self, images, labels, **extra) -> Selection:
        rows = torch.arange(images.shape[0], device=images.device)
        return Selection(
            x=images, y=labels, y_partner=None, m=None, index=rows, scored=0, weights=self.loss_weights(), **extra
        )

    def select(self, images, labels, student):
        rows = torch.arange(images.shape[0], device=images.device)
        return self._selection(images, labels, extra=self.view(images), extra_index=rows)


@register("tlmixup")
class TLMixupSelector(TLSelector):
    """TLmixup: x' = λ·x + (1 − λ)·x[perm]; draws λ, then perm."""

    def view(self, images):
        lam = float(self.rng.beta(self.alpha, self.alpha))
        return mixup(images, self._device_index(self.rng.permutation(images.shape[0]), images), lam)


@register("tlcutmix")
class TLCutMixSelector(TLSelector):
    """TLCutMix: one CutMix box per batch, partner a derangement; draws λ, box centre (y, x), then partner."""

    def view(self, images):
        return self.cutmix_view(images)


@register("tlcutmix_pick")
class TLCutMixPickSelector(TLSelector):
    """TLCutMix+pick: `pool` CutMix views of the batch, scored without grad; the n_pick highest-d rows are x'.

    Runs the teacher on the pool for `kl` and `teacher_entropy` (and hands the picked rows' logits on), the
    student (in `score_mode`) for `kl` and `student_entropy`. This costs more than KD; it buys accuracy.
    """

    needs_teacher = True

    def __init__(
        self,
        alpha,
        tl_alpha: float = 0.9,
        pool: int = 2,
        n_pick=1.0,
        pick_criterion: str = "kl",
        score_mode: str = "train",
        temperature: float = 4.0,
        *,
        seed: int = 0,
    ):
        super().__init__(alpha, tl_alpha, seed=seed)
        check_pool(pool)
        check_n_pick(n_pick, pool)
        check_pick_criterion(pick_criterion)
        check_score_mode(score_mode)
        if isinstance(temperature, bool) or not temperature > 0:
            raise ValueError(f"loss.temperature={temperature!r} must be > 0")
        self.pool, self.n_pick, self.pick_criterion = pool, n_pick, pick_criterion
        self.score_mode, self.temperature = score_mode, temperature

    def select(self, images, labels, student, teacher=None):
        if teacher is None:
            raise ValueError("selection.method=tlcutmix_pick needs the teacher to score its pool")
        N = images.shape[0]
        n_pick = resolve_n_pick(self.n_pick, N, self.pool)
        pool = torch.cat([self.cutmix_view(images) for _ in range(self.pool)])  # row v·N + i has base image i
        t_logits = s_logits = None
        if self.pick_criterion in ("kl", "teacher_entropy"):
            with torch.no_grad():
                t_logits = teacher(pool)
        if self.pick_criterion in ("kl", "student_entropy"):
            s_logits = score(student, pool, self.score_mode)
        d = pick_scores(None if t_logits is None else t_logits.float(), s_logits, self.pick_criterion, self.temperature)
        rows = pick(d, n_pick)
        sel = self._selection(
            images,
            labels,
            extra=pool[rows],
            extra_index=rows % N,
            extra_teacher_logits=None if t_logits is None else t_logits[rows],
            teacher_scored=0 if t_logits is None else pool.shape[0],
        )
        sel.scored = 0 if s_logits is None else pool.shape[0]
        return sel
