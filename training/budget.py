"""The cost model's arithmetic, in one place: each method's cost as a share of KD's, the FLOP conventions, and the
k that spends a given share of conventional KD's FLOPs (compute-budget mode; docs/algorithms.md §1).

training/cost.py counts the per-image FLOPs and keeps the ledger; the `cost` command, the budget mode, the
wall-clock calibration and `profile` compute fractions and k here.

Per step of N images, a method that keeps k rows (and, like UNIX, may run a no-grad student forward on
all N first) spends, against conventional KD:

    E(k)  = k·(F_t + F_s + B_s) + s·N·F_s        s = 1 with a scoring pass, else 0
    E_kd  = N·(F_t + F_s + B_s)
    E(k) <= budget·E_kd   <=>   k <= N·(budget − σ),   σ = s·F_s / (F_t + F_s + B_s)

so k = floor(N·(budget − σ)): the largest k within the budget, spending less than one more image's
cost below it. σ is what the scoring pass alone costs; a budget at or below it leaves nothing for the
teacher and is refused. Conventions: `paper` counts a backward as one forward (B_s = F_s, so
σ = F_s / (F_t + 2·F_s)); `measured` needs the student's measured backward FLOPs B_s per image.
"""

from __future__ import annotations

import math

from .errors import UserError

CONVENTIONS = ("paper", "measured")


def check_convention(convention: str, key: str = "selection.budget_convention") -> None:
    if convention not in CONVENTIONS:
        raise UserError(f"{key}={convention!r} is not one of {', '.join(CONVENTIONS)}")


def backward_per_image(convention: str, Fs: float, measured_Bs: float | None = None) -> float:
    """B_s under `convention`: F_s for `paper`; the measured value for `measured` (refused if there is none)."""
    check_convention(convention)
    if convention == "paper":
        return Fs
    if convention == "measured":
        if measured_Bs is None:
            raise UserError(
                "selection.budget_convention=measured needs the student's measured backward FLOPs, "
                "but none was given; use selection.budget_convention=paper"
            )
        return float(measured_Bs)


def scoring_share(*, Ft: float, Fs: float, Bs: float, scores_batch: bool) -> float:
    """σ: the share of KD's cost that the scoring pass alone takes (0 for methods without one)."""
    return Fs / (Ft + Fs + Bs) if scores_batch else 0.0


def cost_fraction(k: int, *, N: int, Ft: float, Fs: float, Bs: float, scores_batch: bool) -> float:
    """E(k) / E_kd for one step (the ledger's cost_fraction of a run at this k)."""
    return k / N + scoring_share(Ft=Ft, Fs=Fs, Bs=Bs, scores_batch=scores_batch)


def k_for_budget(
    budget: float,
    *,
    N: int,
    Ft: float,
    Fs: float,
    Bs: float,
    scores_batch: bool,
    method: str = "this method",
    key: str = "selection.budget",
) -> int:
    """The largest k in [1, N] whose cost is at most `budget` of KD's; one-line UserError (naming `key`) if none is.
    Only the ratios of Ft, Fs and Bs matter: the `cost` command passes F_t/F_s, 1 and B_s/F_s."""
    if not budget > 0:
        raise UserError(f"{key}={budget!r} must be > 0 (a share of conventional KD's FLOPs)")
    sigma = scoring_share(Ft=Ft, Fs=Fs, Bs=Bs, scores_batch=scores_batch)
    if budget <= sigma:
        raise UserError(
            f"{key}={budget:g} is at or below what {method}'s scoring pass alone costs "
            f"({sigma:.4f} of KD); the smallest budget that leaves one image of N={N} for the "
            f"teacher is {sigma + 1 / N:.4f}"
        )
    k = math.floor(N * (budget - sigma) + 1e-9)  # the epsilon absorbs float error in an exact product
    if k < 1:
        raise UserError(
            f"{key}={budget:g} leaves no image of N={N} for the teacher after {method}'s "
            f"scoring pass ({sigma:.4f} of KD); the smallest budget here is {sigma + 1 / N:.4f}"
        )
    return min(k, N)


def describe(
    budget: float, k: int, *, N: int, Ft: float, Fs: float, Bs: float, scores_batch: bool, convention: str
) -> str:
    """The line the trainer prints: the chosen k and what it costs."""
    spent = cost_fraction(k, N=N, Ft=Ft, Fs=Fs, Bs=Bs, scores_batch=scores_batch)
    ratio = f"F_t/F_s = {Ft / Fs:.2f}, " if Fs > 0 else ""
    capped = " (capped at N)" if k == N and spent < budget - 1 / N else ""
    return (
        f"budget {budget:g} of KD ({convention} convention, {ratio}B_s/F_s = {Bs / Fs:.2f}): "
        f"k = {k} of N = {N}{capped}, cost {spent:.4f} of KD"
    )


def budget_k(
    method: str, budget: float, convention: str, *, N: int, Ft: float, Fs: float, measured_Bs: float | None = None
) -> tuple[int, str]:
    """The k for `method` under `budget`, and the line to print. `measured_Bs`: the student's measured
    backward FLOPs per image, needed by the `measured` convention only."""
    from unixkd.selection import SELECTORS

    scores = SELECTORS[method].scores_batch
    Bs = backward_per_image(convention, Fs, measured_Bs)
    k = k_for_budget(budget, N=N, Ft=Ft, Fs=Fs, Bs=Bs, scores_batch=scores, method=method)
    return k, describe(budget, k, N=N, Ft=Ft, Fs=Fs, Bs=Bs, scores_batch=scores, convention=convention)
