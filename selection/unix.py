"""The pure UNIX core (docs/algorithms.md §2 steps 2-8): uncertainty sort, correction factor, mix, keep top k.

No RNG inside: λ (`lam`) and the partner permutation (`perm`) are drawn by the caller and passed in.
No host sync: no `.item()`, no Python branch on a tensor's value, so the same code can be captured
in a CUDA graph and is the eager reference for it.
"""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass

import torch
from torch import Tensor

from .uncertainty import uncertainty


def correction_factor(N: int, *, w: float = 10.0, b: int | None = None, device=None) -> Tensor:
    """c_r = sigmoid(w * (r/N - (2b-1)/(2N))) for sorted position r = 0..N-1 -> float32 [N] (docs/algorithms.md §2 step 6).

    The authors' code; the paper writes it loosely as sigmoid(w * (rank - b) / N). b=None means N // 2.
    Exactly b entries are < 0.5 (the b most uncertain images are mixed least). w=1: near-linear,
    w=1000: a step.
    """
    N = operator.index(N)
    if N < 1:
        raise ValueError(f"correction_factor needs N >= 1, got N={N}")
    if not w > 0:
        raise ValueError(f"selection.w={w!r} must be > 0")
    b = N // 2 if b is None else operator.index(b)
    if not 0 <= b <= N:
        raise ValueError(f"selection.b={b} must be in [0, N={N}]")
    r = torch.arange(N, dtype=torch.float32, device=device)
    # r/N - (2b-1)/(2N) written as (2r - 2b + 1) / (2N): the numerator is an exact odd integer, so
    # its sign (hence "exactly b entries < 0.5") does not depend on float rounding.
    return torch.sigmoid(w * (2 * r - (2 * b - 1)) / (2 * N))


@dataclass
class UnixMix:
    """The k rows UNIX distils on, in sorted order (most uncertain first)."""

    x: Tensor  # [k, ...] mixed rows, same dtype as the input x
    rank: Tensor  # [k] row of x of each base image: rank[:k] of argsort(uncertainty, descending)
    partner: Tensor  # [k] row of x of each partner: perm[:k]
    m: Tensor  # [k] float32 partner weights λ·c_r


def mix(x: Tensor, base: Tensor, partner: Tensor, m: Tensor) -> Tensor:
    """x_mix[r] = (1 - m_r) * x[base[r]] + m_r * x[partner[r]] (docs/algorithms.md §2 step 7), any float dtype of x, any rank.

    The blend is computed in float32 and cast back to x.dtype (one rounding for bf16/fp16 inputs).
    """
    m = m.float().reshape(-1, *([1] * (x.ndim - 1)))
    # half × float32 promotes to float32 inside the multiply kernel: the same values as upcasting the gathered
    # rows first, without two extra passes over k images (this blend is most of selection's memory traffic)
    x_mix = (1 - m) * x[base] + m * x[partner]
    return x_mix.to(x.dtype)


def unix_mix(
    x: Tensor,
    logits: Tensor,
    *,
    k: int,
    lam: float | Tensor,
    perm: Tensor,
    w: float = 10.0,
    b: int | None = None,
    criterion: str = "entropy",
) -> UnixMix:
    """UNIX selection for one batch, docs/algorithms.md §2 steps 2-8 (the scoring forward, step 1, gave `logits`).

    x [N, ...] float images, logits [N, classes] from the student on x, perm [N] LongTensor of partner
    rows (a permutation of the ORIGINAL batch), lam ~ Beta(α, α) as a float or 0-d tensor (may live on
    the device), 1 <= k <= N rows kept. Sorted row r is x[rank[r]] mixed with x[perm[r]].
    """
    N = x.shape[0] if x.ndim else 0
    if x.ndim < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor [N, ...], got dtype {x.dtype} shape {tuple(x.shape)}")
    if logits.ndim != 2 or logits.shape[0] != N:
        raise ValueError(f"logits must be [N={N}, classes], got shape {tuple(logits.shape)}")
    if perm.ndim != 1 or perm.shape[0] != N or perm.is_floating_point() or perm.dtype == torch.bool:
        raise ValueError(f"perm must be an integer tensor [N={N}], got {perm.dtype} shape {tuple(perm.shape)}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= N:
        raise ValueError(f"k={k!r} must be an int with 1 <= k <= N={N} (resolve fractions with resolve_k)")
    if isinstance(lam, Tensor):
        if lam.ndim != 0:
            raise ValueError(f"lam must be a float or a 0-d tensor, got shape {tuple(lam.shape)}")
        lam = lam.to(device=x.device, dtype=torch.float32)  # no sync: stays a tensor, value unchecked
    elif not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam!r} must be in [0, 1]")
    k = int(k)

    u = uncertainty(logits, criterion)  # step 2
    rank = torch.argsort(u, descending=True, stable=True)  # step 3: most uncertain first; ties by row
    c = correction_factor(N, w=w, b=b, device=x.device)  # step 6
    rank, partner = rank[:k], perm[:k]  # step 8: only the first k rows are built
    m = lam * c[:k]  # step 7: m_r = λ·c_r
    return UnixMix(x=mix(x, rank, partner, m), rank=rank, partner=partner, m=m)
