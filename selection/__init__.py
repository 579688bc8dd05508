"""Which images the teacher sees: uncertainty, the pure UNIX core, and selectors (KD, Random+KD, UNIX).

Knows tensors and a student callable; nothing of DALI or Accelerate. Formulas: SPEC.md §2.
"""

from .selectors import (
    METHODS,
    SCORE_MODES,
    SELECTORS,
    KDSelector,
    RandomSelector,
    Selection,
    Selector,
    UnixSelector,
    build_selector,
    register,
    resolve_b,
    resolve_k,
    score,
)
from .uncertainty import CRITERIA, uncertainty
from .unix import UnixMix, correction_factor, mix, unix_mix

__all__ = [
    "CRITERIA", "METHODS", "SCORE_MODES", "SELECTORS",
    "KDSelector", "RandomSelector", "Selection", "Selector", "UnixMix", "UnixSelector",
    "build_selector", "correction_factor", "mix", "register", "resolve_b", "resolve_k", "score",
    "uncertainty", "unix_mix",
]
