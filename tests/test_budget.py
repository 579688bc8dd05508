"""training.budget: the k chosen for a budget, checked against the docs/algorithms.md §1 energy sums written out here."""

import inspect

import numpy as np
import pytest

from unixkd.selection import SELECTORS
from unixkd.training.budget import backward_per_image, budget_k, k_for_budget
from unixkd.training.config import BUDGET_METHODS


def spent(k, N, Ft, Fs, Bs, scores):
    """E(k) / E_kd from the energies: k rows through teacher + student fwd/bwd, plus the scoring pass on N."""
    e = k * (Ft + Fs + Bs) + (N * Fs if scores else 0.0)
    return e / (N * (Ft + Fs + Bs))


@pytest.mark.parametrize("scores", [True, False])
@pytest.mark.parametrize("Ft,Fs,Bs,N", [(38.17, 1.0, 1.0, 64), (45.4, 1.0, 1.0, 256), (7.0, 2.0, 4.1, 50)])
def test_chosen_k_is_within_one_image_of_the_budget(Ft, Fs, Bs, N, scores):
    one_image = 1 / N  # one more row costs (F_t + F_s + B_s), i.e. 1/N of KD's step
    lowest = (Fs / (Ft + Fs + Bs) if scores else 0.0) + one_image
    for budget in np.linspace(lowest, 1.0, 97):
        k = k_for_budget(float(budget), N=N, Ft=Ft, Fs=Fs, Bs=Bs, scores_batch=scores)
        cost = spent(k, N, Ft, Fs, Bs, scores)
        assert 1 <= k <= N
        assert cost <= budget + 1e-12  # never over the budget
        assert budget - cost < one_image or k == N  # and less than one image under it


def test_the_published_table():
    # docs/algorithms.md §1: F_t/F_s = 38.17, N = 64: k = 48 costs 77.49 %, k = 40 costs 64.99 %
    assert k_for_budget(0.7749, N=64, Ft=38.17, Fs=1.0, Bs=1.0, scores_batch=True) == 48
    assert k_for_budget(0.65, N=64, Ft=38.17, Fs=1.0, Bs=1.0, scores_batch=True) == 40
    assert k_for_budget(0.7748, N=64, Ft=38.17, Fs=1.0, Bs=1.0, scores_batch=True) == 47  # just below: one fewer


def test_without_a_scoring_pass_k_is_the_budget_times_n():
    assert k_for_budget(0.75, N=64, Ft=38.17, Fs=1.0, Bs=1.0, scores_batch=False) == 48
    assert k_for_budget(1.0, N=64, Ft=38.17, Fs=1.0, Bs=1.0, scores_batch=False) == 64


def test_more_than_the_method_can_spend_is_capped_at_n():
    assert k_for_budget(1.5, N=64, Ft=10.0, Fs=1.0, Bs=1.0, scores_batch=True) == 64


def test_a_budget_the_scoring_pass_alone_eats_is_refused():
    sigma = 1 / 40.17  # F_s / (F_t + 2 F_s)
    with pytest.raises(ValueError, match="scoring pass alone costs") as e:
        k_for_budget(sigma, N=64, Ft=38.17, Fs=1.0, Bs=1.0, scores_batch=True, method="unix")
    assert "\n" not in str(e.value) and "0.0249" in str(e.value)
    with pytest.raises(ValueError, match="leaves no image"):
        k_for_budget(sigma + 0.5 / 64, N=64, Ft=38.17, Fs=1.0, Bs=1.0, scores_batch=True)
    assert k_for_budget(sigma + 1 / 64 + 1e-9, N=64, Ft=38.17, Fs=1.0, Bs=1.0, scores_batch=True) == 1
    with pytest.raises(ValueError, match="must be > 0"):
        k_for_budget(0.0, N=64, Ft=38.17, Fs=1.0, Bs=1.0, scores_batch=False)


def test_conventions():
    assert backward_per_image("paper", 3.0) == 3.0
    assert backward_per_image("measured", 3.0, measured_Bs=6.5) == 6.5
    with pytest.raises(ValueError, match="budget_convention=measured"):
        backward_per_image("measured", 3.0)
    # a measured B_s = 2 F_s makes the scoring pass cheaper relative to KD: more rows for the same budget
    paper = k_for_budget(0.8, N=256, Ft=5.0, Fs=1.0, Bs=1.0, scores_batch=True)
    measured = k_for_budget(0.8, N=256, Ft=5.0, Fs=1.0, Bs=2.0, scores_batch=True)
    assert (paper, measured) == (168, 172)  # floor(256 · (0.8 − 1/7)) and floor(256 · (0.8 − 1/8))


def test_budget_k_knows_which_methods_score_the_batch():
    k_unix, line = budget_k("unix", 0.8, "paper", N=64, Ft=38.17, Fs=1.0)
    assert k_unix == 49 and "k = 49 of N = 64" in line and "paper" in line
    assert budget_k("random", 0.8, "paper", N=64, Ft=38.17, Fs=1.0)[0] == 51  # floor(0.8 · 64)
    assert budget_k("nonadaptive", 0.8, "paper", N=64, Ft=38.17, Fs=1.0)[0] == 49
    assert budget_k("mixup", 0.8, "paper", N=64, Ft=38.17, Fs=1.0)[0] == 51


def test_config_budget_methods_are_the_selectors_that_keep_k_rows():
    keep_k = {name for name, cls in SELECTORS.items() if "k" in inspect.signature(cls.__init__).parameters}
    assert set(BUDGET_METHODS) == keep_k
