"""training.losses against float64 plain-Python references and torch's own cross entropy."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from unixkd.training.losses import distill_loss, kd_loss, mixed_ce


def softmax(row):
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def ref_kd(s, t, T):
    """sum_i sum_c p_t log(p_t / p_s) / B * T^2, one row at a time in Python floats."""
    total = 0.0
    for s_row, t_row in zip(s.double().tolist(), t.double().tolist()):
        p_s = softmax([v / T for v in s_row])
        p_t = softmax([v / T for v in t_row])
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return total / s.shape[0] * T * T


def ref_ce(row, label):
    top = max(row)
    return -(row[label] - top - math.log(sum(math.exp(v - top) for v in row)))


def ref_mixed_ce(s, y, y2, m):
    rows = s.double().tolist()
    per = [
        (1 - mi) * ref_ce(r, a) + mi * ref_ce(r, b) for r, a, b, mi in zip(rows, y.tolist(), y2.tolist(), m.tolist())
    ]
    return sum(per) / len(per)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g) * 3
    t = torch.randn(6, 5, generator=g) * 3
    y = torch.randint(0, 5, (6,), generator=g)
    y2 = torch.randint(0, 5, (6,), generator=g)
    m = torch.rand(6, generator=g)
    return s, t, y, y2, m


@pytest.mark.parametrize("T", [1.0, 4.0, 0.5])
def test_kd_matches_reference(logits, T):
    s, t = logits[:2]
    assert kd_loss(s, t, T).item() == pytest.approx(ref_kd(s, t, T), rel=1e-5, abs=1e-7)


def test_kd_is_zero_for_equal_logits_and_positive_otherwise(logits):
    s, t = logits[:2]
    assert kd_loss(s, s.clone(), 4.0).abs().item() < 1e-6
    assert kd_loss(s + 5.0, s, 4.0).abs().item() < 1e-6  # a shift of all logits changes no probability
    assert kd_loss(s, t, 4.0).item() > 1e-3


def test_kd_direction_is_teacher_to_student(logits):
    s, t = logits[:2]
    forward = ref_kd(s, t, 2.0)
    assert abs(forward - ref_kd(t, s, 2.0)) > 1e-3  # KL is not symmetric, so the order is tested
    assert kd_loss(s, t, 2.0).item() == pytest.approx(forward, rel=1e-5)


def test_kd_gradient_reaches_the_student_only(logits):
    s, t = logits[:2]
    s = s.clone().requires_grad_(True)
    T, B = 4.0, s.shape[0]
    kd_loss(s, t, T).backward()
    assert t.grad is None and not t.requires_grad
    # d/ds [T^2/B * KL(p_t || p_s)] = T/B * (p_s - p_t), with p at temperature T
    expected = T / B * (torch.softmax(s.detach().double() / T, -1) - torch.softmax(t.double() / T, -1))
    torch.testing.assert_close(s.grad.double(), expected, rtol=1e-4, atol=1e-7)


def test_kd_low_precision_inputs_give_float32(logits):
    s, t = logits[:2]
    out = kd_loss(s.bfloat16(), t.bfloat16(), 4.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_kd(s.bfloat16().float(), t.bfloat16().float(), 4.0), rel=1e-4)


def test_mixed_ce_without_m_is_cross_entropy(logits):
    s, _, y, _, _ = logits
    torch.testing.assert_close(mixed_ce(s, y), F.cross_entropy(s, y))
    assert mixed_ce(s, y).item() == pytest.approx(
        sum(ref_ce(r, a) for r, a in zip(s.tolist(), y.tolist())) / 6, rel=1e-6
    )


def test_mixed_ce_with_m_is_the_per_row_mix(logits):
    s, _, y, y2, m = logits
    assert mixed_ce(s, y, y2, m).item() == pytest.approx(ref_mixed_ce(s, y, y2, m), rel=1e-6)
    torch.testing.assert_close(mixed_ce(s, y, y2, torch.zeros(6)), F.cross_entropy(s, y))
    torch.testing.assert_close(mixed_ce(s, y, y2, torch.ones(6)), F.cross_entropy(s, y2))


def test_distill_loss_weights(logits):
    s, t, y, y2, m = logits
    sel = SimpleNamespace(y=y, y_partner=y2, m=m)
    kd, ce = ref_kd(s, t, 4.0), ref_mixed_ce(s, y, y2, m)
    both = distill_loss(s, t, sel, temperature=4.0, kd_weight=0.9, ce_weight=1.0).item()
    assert both == pytest.approx(0.9 * kd + 1.0 * ce, rel=1e-5)
    kd_only = distill_loss(
        s, t, SimpleNamespace(y=None, y_partner=None, m=None), temperature=4.0, kd_weight=1.0, ce_weight=0.0
    ).item()
    assert kd_only == pytest.approx(kd, rel=1e-5)
    cifar = distill_loss(s, t, sel, temperature=4.0, kd_weight=0.9, ce_weight=0.1).item()
    assert cifar == pytest.approx(0.9 * kd + 0.1 * ce, rel=1e-5)


def test_distill_loss_without_teacher_is_ce_and_trains(logits):
    s, _, y, _, _ = logits
    s = s.clone().requires_grad_(True)
    sel = SimpleNamespace(y=y, y_partner=None, m=None)
    loss = distill_loss(s, None, sel, temperature=4.0, kd_weight=1.0, ce_weight=1.0)
    assert loss.item() == pytest.approx(sum(ref_ce(r, a) for r, a in zip(s.tolist(), y.tolist())) / 6, rel=1e-6)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
