"""selection.ablations (the UNIX paper's Table 5): rows, weights and label pairs against the draws replayed by hand."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from unixkd.selection import build_selector

N, C = 8, 5


class Linear(nn.Module):
    """A fixed classifier on flattened images that counts its calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 2 * 2, C)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, 2, 2, generator=g), torch.randint(0, C, (N,), generator=g)


def never_called(x):
    raise AssertionError("no scoring forward expected")


def entropy_rank(student, images):
    """Rows by descending entropy, computed in float64 numpy from the student's logits."""
    with torch.no_grad():
        z = student.fc(images.flatten(1)).double().numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    entropy = -(p * np.log(p)).sum(1)
    return np.argsort(-entropy, kind="stable")  # most uncertain first


def margin_rank(student, images):
    with torch.no_grad():
        p = torch.softmax(student.fc(images.flatten(1)).double(), 1).numpy()
    top = np.sort(p, 1)[:, ::-1]
    margin = top[:, 0] - top[:, 1]
    return np.argsort(margin, kind="stable")  # smallest margin (most uncertain) first


@pytest.mark.parametrize("criterion,ranker", [("entropy", entropy_rank), ("margin", margin_rank)])
def test_uncertainty_is_top_k_clean(criterion, ranker):
    images, labels = batch()
    student = Linear()
    sel = build_selector("uncertainty", k=3, criterion=criterion).select(images, labels, student)
    want = ranker(student, images)[:3].tolist()
    assert sel.index.tolist() == want
    assert torch.equal(sel.x, images[want]) and torch.equal(sel.y, labels[want])
    assert sel.m is None and sel.y_partner is None  # clean: no mixing, no partner labels
    assert sel.scored == N and student.calls == 1
    assert sel.extra is None and sel.weights is None and sel.teacher_scored == 0


def test_mixup_is_k_random_rows_mixed_at_lambda():
    images, labels = batch()
    alpha, seed, k = 0.7, 11, 5
    sel = build_selector("mixup", k=k, alpha=alpha, seed=seed).select(images, labels, never_called)
    rng = np.random.default_rng(seed)  # the draws, in the documented order: λ, partner perm, subset
    lam = rng.beta(alpha, alpha)
    perm = rng.permutation(N)
    base = np.sort(rng.permutation(N)[:k])
    assert sel.index.tolist() == base.tolist()
    assert sel.scored == 0
    np.testing.assert_allclose(sel.m.numpy(), [lam] * k, rtol=1e-6)
    assert sel.y.tolist() == labels[base].tolist() and sel.y_partner.tolist() == labels[perm[:k]].tolist()
    for r in range(k):
        torch.testing.assert_close(sel.x[r], (1 - lam) * images[base[r]] + lam * images[perm[r]])


def test_nonadaptive_is_top_k_mixed_at_lambda():
    images, labels = batch(1)
    student = Linear()
    alpha, seed, k = 1.0, 4, 6
    sel = build_selector("nonadaptive", k=k, alpha=alpha, seed=seed).select(images, labels, student)
    rng = np.random.default_rng(seed)  # λ, then the partner permutation over the original batch
    lam = rng.beta(alpha, alpha)
    perm = rng.permutation(N)
    rank = entropy_rank(student, images)[:k]
    assert sel.index.tolist() == rank.tolist() and sel.scored == N
    np.testing.assert_allclose(sel.m.numpy(), [lam] * k, rtol=1e-6)  # no correction factor
    assert sel.y_partner.tolist() == labels[perm[:k]].tolist()
    for r in range(k):
        torch.testing.assert_close(sel.x[r], (1 - lam) * images[rank[r]] + lam * images[perm[r]])


def test_nonadaptive_differs_from_unix_only_by_the_correction_factor():
    images, labels = batch(2)
    student = Linear()
    a = build_selector("nonadaptive", k=4, alpha=1.0, seed=9).select(images, labels, student)
    u = build_selector("unix", k=4, alpha=1.0, seed=9).select(images, labels, student)
    assert torch.equal(a.index, u.index) and torch.equal(a.y_partner, u.y_partner)
    c = [1 / (1 + math.exp(-10 * (r / N - (2 * (N // 2) - 1) / (2 * N)))) for r in range(4)]
    np.testing.assert_allclose(u.m.numpy(), a.m.numpy() * np.array(c), rtol=1e-5)


@pytest.mark.parametrize("method", ["uncertainty", "mixup", "nonadaptive"])
def test_needs_k(method):
    with pytest.raises(ValueError, match="selection.k is required"):
        build_selector(method)
