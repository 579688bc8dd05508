"""Which images the teacher sees: uncertainty, the pure UNIX core, and one selector per method.

KD, Random+KD, UNIX (selectors.py); the UNIX paper's ablations (ablations.py); TL-augmentation (tl.py);
UNIX replayed from one CUDA graph, with its CPU twin (graphed.py).
Knows tensors and a student callable; nothing of DALI or Accelerate. Formulas: docs/algorithms.md §2-§3.
"""

from .ablations import MixupSelector, NonAdaptiveSelector, UncertaintySelector  # importing registers them
from .graphed import GraphedUnixSelector, StaticGraph, graphed
from .selectors import (
    PICK_CRITERIA,
    SCORE_MODES,
    SELECTORS,
    KDSelector,
    LossWeights,
    RandomSelector,
    Selection,
    Selector,
    SelectsRows,
    UnixSelector,
    build_selector,
    register,
    resolve_b,
    resolve_k,
    resolve_n_pick,
    score,
    to_device,
)
from .tl import TLCutMixPickSelector, TLCutMixSelector, TLMixupSelector  # importing registers them
from .uncertainty import CRITERIA, uncertainty
from .unix import UnixMix, correction_factor, mix, unix_mix

METHODS = tuple(SELECTORS)  # every registered method, in registration order

__all__ = [
    "CRITERIA",
    "METHODS",
    "PICK_CRITERIA",
    "SCORE_MODES",
    "SELECTORS",
    "GraphedUnixSelector",
    "KDSelector",
    "LossWeights",
    "MixupSelector",
    "NonAdaptiveSelector",
    "RandomSelector",
    "Selection",
    "Selector",
    "SelectsRows",
    "StaticGraph",
    "TLCutMixPickSelector",
    "TLCutMixSelector",
    "TLMixupSelector",
    "UncertaintySelector",
    "UnixMix",
    "UnixSelector",
    "build_selector",
    "correction_factor",
    "graphed",
    "mix",
    "register",
    "resolve_b",
    "resolve_k",
    "resolve_n_pick",
    "score",
    "to_device",
    "uncertainty",
    "unix_mix",
]
