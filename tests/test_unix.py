"""selection.uncertainty and selection.unix against hand-computed values and loop references."""

import math

import numpy as np
import pytest
import torch

from unixkd.selection.uncertainty import CRITERIA, uncertainty
from unixkd.selection.unix import correction_factor, unix_mix


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def ref_uncertainty(logits, criterion):
    """float64 numpy reference, one row at a time."""
    out = []
    for row in np.asarray(logits, dtype=np.float64):
        p = np.exp(row - row.max())
        p /= p.sum()
        if criterion == "entropy":
            out.append(-sum(pi * math.log(pi) for pi in p if pi > 0))
        elif criterion == "confidence":
            out.append(1.0 - p.max())
        else:
            top = sorted(p, reverse=True)
            out.append(-(top[0] - top[1]))
    return np.array(out)


def ref_unix_mix(x, logits, k, lam, perm, w=10.0, b=None, criterion="entropy"):
    """Straightforward docs/algorithms.md §2 steps 2-8 in float64: row loops, math.exp for the sigmoid."""
    N = x.shape[0]
    b = N // 2 if b is None else b
    u = ref_uncertainty(logits, criterion)
    rank = sorted(range(N), key=lambda i: -u[i])  # Python's sort is stable: ties keep row order
    xs = x.double().numpy()
    rows, ms = [], []
    for r in range(k):
        c = sigmoid(w * (r / N - (2 * b - 1) / (2 * N)))
        m = lam * c
        ms.append(m)
        rows.append((1 - m) * xs[rank[r]] + m * xs[int(perm[r])])
    return np.stack(rows), rank[:k], np.array(ms), u


# ---- correction factor (docs/algorithms.md §2 step 6) ----


def test_correction_factor_hand_values():
    # N=4, w=10, b=2: c_r = sigmoid(10 * (r/4 - 3/8)) -> exponents -3.75, -1.25, 1.25, 3.75
    expected = [
        1 / (1 + math.exp(3.75)),
        1 / (1 + math.exp(1.25)),
        1 / (1 + math.exp(-1.25)),
        1 / (1 + math.exp(-3.75)),
    ]
    c = correction_factor(4, w=10.0, b=2)
    assert c.dtype == torch.float32 and c.shape == (4,)
    torch.testing.assert_close(c, torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(correction_factor(4), c)  # b=None -> N // 2


@pytest.mark.parametrize(
    "N,b",
    [(1, 0), (1, 1), (4, 0), (4, 2), (4, 4), (7, 3), (64, 10), (64, 32), (256, 128), (256, 255), (100_000, 50_000)],
)
@pytest.mark.parametrize("w", [1.0, 10.0, 1000.0])
def test_correction_factor_exactly_b_below_half(N, b, w):
    c = correction_factor(N, w=w, b=b)
    assert int((c < 0.5).sum()) == b
    assert bool((c[:b] < 0.5).all()) and bool((c[b:] > 0.5).all())


def test_correction_factor_default_b_is_half():
    for N in (1, 2, 5, 64, 255):
        assert int((correction_factor(N) < 0.5).sum()) == N // 2


def test_correction_factor_w1000_is_a_step():
    c = correction_factor(64, w=1000.0, b=32)
    assert bool((c[:32] < 1e-3).all()) and bool((c[32:] > 1 - 1e-3).all())
    assert bool((c.diff() >= 0).all())


@pytest.mark.parametrize("w", [1.0, 10.0])
def test_correction_factor_strictly_increasing(w):
    assert bool((correction_factor(256, w=w).diff() > 0).all())


def test_correction_factor_w1_is_near_linear():
    c = correction_factor(64, w=1.0)
    d = c.diff()
    assert float(d.max() / d.min()) < 1.1  # sigmoid on [-0.5, 0.5]: almost a straight line


@pytest.mark.parametrize("kwargs", [dict(N=0), dict(N=4, b=5), dict(N=4, b=-1), dict(N=4, w=0.0), dict(N=4, w=-1.0)])
def test_correction_factor_errors(kwargs):
    N = kwargs.pop("N")
    with pytest.raises(ValueError):
        correction_factor(N, **kwargs)


# ---- uncertainty criteria (docs/algorithms.md §2 step 2) ----


def test_uniform_and_one_hot():
    C = 10
    uniform = torch.zeros(1, C)
    assert uncertainty(uniform, "entropy").item() == pytest.approx(math.log(C), rel=1e-6)
    assert uncertainty(uniform, "confidence").item() == pytest.approx(1 - 1 / C, rel=1e-6)
    assert uncertainty(uniform, "margin").item() == pytest.approx(0.0, abs=1e-7)
    one_hot = torch.tensor([[200.0] + [0.0] * (C - 1)])
    assert uncertainty(one_hot, "entropy").item() == pytest.approx(0.0, abs=1e-6)
    assert uncertainty(one_hot, "confidence").item() == pytest.approx(0.0, abs=1e-6)
    assert uncertainty(one_hot, "margin").item() == pytest.approx(-1.0, abs=1e-6)


def test_known_distribution():
    p = [0.2, 0.3, 0.5]
    logits = torch.tensor([[math.log(q) for q in p]])
    assert uncertainty(logits).item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-6)
    assert uncertainty(logits, "confidence").item() == pytest.approx(0.5, rel=1e-6)
    assert uncertainty(logits, "margin").item() == pytest.approx(-0.2, rel=1e-5)


def test_entropy_finite_when_probabilities_underflow():
    logits = torch.tensor([[1000.0, -1000.0, 0.0], [0.0, -float("inf"), 0.0]])
    u = uncertainty(logits, "entropy")
    assert bool(torch.isfinite(u).all())
    assert u[0].item() == pytest.approx(0.0, abs=1e-6)
    assert u[1].item() == pytest.approx(math.log(2), rel=1e-6)  # a -inf logit is a 0-probability class


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_uncertainty_float32_out(dtype):
    logits = torch.randn(5, 7).to(dtype)
    for criterion in CRITERIA:
        u = uncertainty(logits, criterion)
        assert u.dtype == torch.float32 and u.shape == (5,)


def test_criteria_agree_when_one_class_dominates():
    # rows [t, 0, 0, 0] with t >= 0: every criterion falls as t grows, so all give the same order
    t = torch.tensor([3.0, 0.2, 0.5, 7.0, 1.5, 0.0])
    logits = torch.zeros(6, 4)
    logits[:, 0] = t
    expected = torch.argsort(t)  # least dominant (most uncertain) first
    for criterion in CRITERIA:
        order = torch.argsort(uncertainty(logits, criterion), descending=True)
        assert order.tolist() == expected.tolist(), criterion


@pytest.mark.parametrize("criterion", CRITERIA)
def test_uncertainty_matches_reference(criterion):
    logits = torch.randn(32, 10, generator=torch.Generator().manual_seed(0)) * 3
    np.testing.assert_allclose(
        uncertainty(logits, criterion).numpy(), ref_uncertainty(logits, criterion), rtol=1e-5, atol=1e-6
    )


def test_unknown_criterion_one_line():
    with pytest.raises(ValueError, match="entropy, confidence, margin") as e:
        uncertainty(torch.zeros(2, 3), "variance")
    assert "\n" not in str(e.value)


# ---- unix_mix (docs/algorithms.md §2 steps 2-8) ----


def hand_case():
    # entropies: row 2 uniform (highest), then row 0 ([1,0,0]), row 3 ([5,0,0]), row 1 ([10,0,0])
    logits = torch.tensor([[1.0, 0, 0], [10.0, 0, 0], [0.0, 0, 0], [5.0, 0, 0]])
    x = torch.arange(4 * 2 * 2 * 2, dtype=torch.float32).reshape(4, 2, 2, 2)
    perm = torch.tensor([3, 0, 1, 2])
    return x, logits, perm


def test_unix_mix_hand_case():
    x, logits, perm = hand_case()
    lam, k = 0.5, 3
    out = unix_mix(x, logits, k=k, lam=lam, perm=perm)
    assert out.rank.tolist() == [2, 0, 3, 1][:k]
    assert out.partner.tolist() == [3, 0, 1]
    # N=4, b=2, w=10: c_r = sigmoid(10 * (r/4 - 3/8))
    c = [sigmoid(10 * (r / 4 - 3 / 8)) for r in range(4)]
    m = [lam * c[r] for r in range(k)]
    assert out.m.dtype == torch.float32
    np.testing.assert_allclose(out.m.numpy(), m, rtol=1e-6)
    assert out.x.shape == (k, 2, 2, 2) and out.x.dtype == x.dtype
    base = [2, 0, 3]
    for r in range(k):
        for i in range(2):
            for j in range(2):
                for l in range(2):
                    want = (1 - m[r]) * x[base[r], i, j, l].item() + m[r] * x[perm[r], i, j, l].item()
                    assert out.x[r, i, j, l].item() == pytest.approx(want, rel=1e-6)


def test_lam_zero_gives_clean_rows():
    x, logits, perm = hand_case()
    out = unix_mix(x, logits, k=3, lam=0.0, perm=perm)
    assert torch.equal(out.x, x[[2, 0, 3]])
    assert torch.equal(out.m, torch.zeros(3))


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("k", [48, 64, 1])
def test_unix_mix_matches_loop_reference(criterion, k):
    g = torch.Generator().manual_seed(1234)
    N = 64
    x = torch.randn(N, 3, 5, 5, generator=g)
    logits = torch.randn(N, 10, generator=g) * 3
    perm = torch.randperm(N, generator=g)
    lam = 0.7
    want_x, want_rank, want_m, u = ref_unix_mix(x, logits, k, lam, perm, criterion=criterion)
    gaps = np.diff(np.sort(u))
    assert gaps.min() > 1e-5, "reference order must not hinge on float32 rounding"
    out = unix_mix(x, logits, k=k, lam=lam, perm=perm, criterion=criterion)
    assert out.rank.tolist() == want_rank
    assert torch.equal(out.partner, perm[:k])
    np.testing.assert_allclose(out.m.numpy(), want_m, rtol=1e-6)
    np.testing.assert_allclose(out.x.numpy(), want_x, rtol=1e-5, atol=1e-6)


def test_unix_mix_2d_rows_and_b_w():
    g = torch.Generator().manual_seed(7)
    N, k = 10, 6
    x = torch.randn(N, 16, generator=g)
    logits = torch.randn(N, 5, generator=g)
    perm = torch.randperm(N, generator=g)
    want_x, want_rank, want_m, _ = ref_unix_mix(x, logits, k, 0.3, perm, w=1.0, b=3)
    out = unix_mix(x, logits, k=k, lam=0.3, perm=perm, w=1.0, b=3)
    assert out.rank.tolist() == want_rank and out.x.shape == (k, 16)
    np.testing.assert_allclose(out.m.numpy(), want_m, rtol=1e-6)
    np.testing.assert_allclose(out.x.numpy(), want_x, rtol=1e-5, atol=1e-6)


def test_ties_keep_batch_order():
    x = torch.randn(5, 2)
    out = unix_mix(x, torch.zeros(5, 3), k=5, lam=0.5, perm=torch.arange(5))
    assert out.rank.tolist() == [0, 1, 2, 3, 4]


def test_bf16_input():
    g = torch.Generator().manual_seed(3)
    N, k = 16, 12
    x = torch.randn(N, 3, 4, 4, generator=g).bfloat16()
    logits = (torch.randn(N, 10, generator=g) * 3).bfloat16()
    perm = torch.randperm(N, generator=g)
    out = unix_mix(x, logits, k=k, lam=0.4, perm=perm)
    assert out.x.dtype == torch.bfloat16 and out.m.dtype == torch.float32
    want_x, want_rank, want_m, _ = ref_unix_mix(x.float(), logits.float(), k, 0.4, perm)
    assert out.rank.tolist() == want_rank
    np.testing.assert_allclose(out.m.numpy(), want_m, rtol=1e-6)
    torch.testing.assert_close(out.x, torch.from_numpy(want_x).bfloat16())


def test_tensor_lam_equals_float_lam():
    x, logits, perm = hand_case()
    ref = unix_mix(x, logits, k=4, lam=0.3, perm=perm)
    for lam in (torch.tensor(0.3), torch.tensor(0.3, dtype=torch.float64)):
        out = unix_mix(x, logits, k=4, lam=lam, perm=perm)
        assert out.m.dtype == torch.float32
        torch.testing.assert_close(out.m, ref.m)
        torch.testing.assert_close(out.x, ref.x)


def test_unix_mix_errors():
    x, logits, perm = hand_case()
    bad = [
        dict(k=0),
        dict(k=5),
        dict(k=True),
        dict(k=0.5),
        dict(perm=perm[:3]),
        dict(perm=perm.float()),
        dict(perm=perm[None]),
        dict(logits=logits[:3]),
        dict(logits=logits[0]),
        dict(lam=torch.tensor([0.5])),
        dict(lam=1.5),
        dict(criterion="variance"),
        dict(x=x.long()),
    ]
    for override in bad:
        kwargs = dict(x=x, logits=logits, k=2, lam=0.5, perm=perm) | override
        with pytest.raises(ValueError) as e:
            unix_mix(kwargs.pop("x"), kwargs.pop("logits"), **kwargs)
        assert "\n" not in str(e.value), override


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_unix_mix_no_host_sync_on_cuda():
    x = torch.randn(64, 3, 8, 8, device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(64, 100, device="cuda")
    perm = torch.randperm(64, device="cuda")
    lam = torch.tensor(0.3, device="cuda")
    unix_mix(x, logits, k=48, lam=lam, perm=perm)  # warm-up (lazy inits may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = unix_mix(x, logits, k=48, lam=lam, perm=perm)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = unix_mix(x.cpu(), logits.cpu(), k=48, lam=0.3, perm=perm.cpu())
    assert torch.equal(out.rank.cpu(), ref.rank)
    torch.testing.assert_close(out.x.cpu(), ref.x)
