"""selection.selectors: what each selector hands on, its student calls, RNG resume and option errors."""

import io
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from unixkd.selection import (
    METHODS,
    SELECTORS,
    KDSelector,
    RandomSelector,
    Selection,
    Selector,
    UnixSelector,
    build_selector,
    register,
    resolve_k,
)

N, C, D = 16, 10, 3 * 4 * 4


class FakeStudent(nn.Module):
    """A linear classifier that records how it was called."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(D, C)
        self.head = nn.Identity()  # a submodule that may sit in its own mode (a frozen block)
        self.calls = []

    def forward(self, x):
        self.calls.append(dict(x=x.clone(), grad=torch.is_grad_enabled(), training=self.training))
        return self.head(self.fc(x.flatten(1)))


def never_called(x):
    raise AssertionError("the student must not be called")


def batch(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, C, (n,), generator=g)


def entropy_order(logits):
    """Rows by descending entropy, float64 numpy, stable."""
    z = logits.double().numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h = -(p * np.log(p)).sum(1)
    return np.argsort(-h, kind="stable").tolist()


# ---- KD and Random+KD ----


def test_kd_all_rows_untouched():
    images, labels = batch()
    sel = build_selector("kd").select(images, labels, never_called)
    assert isinstance(sel, Selection)
    assert sel.x is images and sel.y is labels
    assert sel.y_partner is None and sel.m is None and sel.scored == 0
    assert sel.index.tolist() == list(range(N))


def test_random_clean_distinct_rows():
    images, labels = batch()
    selector = build_selector("random", k=5, seed=1)
    seen = set()
    for _ in range(50):
        sel = selector.select(images, labels, never_called)
        idx = sel.index.tolist()
        assert len(idx) == 5 and len(set(idx)) == 5 and idx == sorted(idx)
        assert all(0 <= i < N for i in idx)
        assert torch.equal(sel.x, images[sel.index]) and torch.equal(sel.y, labels[sel.index])
        assert sel.m is None and sel.y_partner is None and sel.scored == 0
        seen.update(idx)
    assert seen == set(range(N))


def test_random_without_labels_and_fraction():
    images, _ = batch()
    sel = RandomSelector(0.25).select(images, None, never_called)
    assert sel.y is None and sel.x.shape[0] == 4


# ---- UNIX ----


@pytest.mark.parametrize("k,alpha,b", [(12, 1.0, None), (0.75, 0.2, 5), (16, 1.0, 0.25)])
def test_unix_consistent_with_mix(k, alpha, b):
    images, labels = batch()
    student = FakeStudent().train()
    seed = 3
    sel = build_selector("unix", k=k, alpha=alpha, b=b, seed=seed).select(images, labels, student)

    # one no-grad forward, in train mode, on all N rows
    assert len(student.calls) == 1
    call = student.calls[0]
    assert torch.equal(call["x"], images) and call["grad"] is False and call["training"] is True
    assert sel.scored == N

    # the selector's draws, replayed: λ first, then the partner permutation
    rng = np.random.default_rng(seed)
    lam = rng.beta(alpha, alpha)
    perm = rng.permutation(N)
    kk = {12: 12, 0.75: 12, 16: 16}[k]
    bb = {None: N // 2, 5: 5, 0.25: 4}[b]
    with torch.no_grad():
        logits = student.fc(images.flatten(1))
    assert sel.index.tolist() == entropy_order(logits)[:kk]
    m = [lam * 1 / (1 + math.exp(-10 * (r / N - (2 * bb - 1) / (2 * N)))) for r in range(kk)]
    np.testing.assert_allclose(sel.m.numpy(), m, rtol=1e-5)
    assert torch.equal(sel.y, labels[sel.index])
    assert torch.equal(sel.y_partner, labels[torch.as_tensor(perm[:kk])])
    for r in range(kk):
        want = (1 - m[r]) * images[sel.index[r]] + m[r] * images[perm[r]]
        torch.testing.assert_close(sel.x[r], want)
    assert sel.x.shape == (kk, 3, 4, 4) and sel.x.dtype == images.dtype


def test_unix_without_labels():
    images, _ = batch()
    sel = UnixSelector(4, 1.0).select(images, None, FakeStudent())
    assert sel.y is None and sel.y_partner is None and sel.m.shape == (4,)


def test_unix_plain_callable_student():
    images, labels = batch()
    fc = nn.Linear(D, C)
    sel = UnixSelector(4, 1.0, score_mode="eval").select(images, labels, lambda x: fc(x.flatten(1)))
    assert sel.x.shape == (4, 3, 4, 4)


@pytest.mark.parametrize("start_training", [True, False])
@pytest.mark.parametrize("score_mode", ["train", "eval"])
def test_unix_score_mode_observed_and_restored(score_mode, start_training):
    images, labels = batch()
    student = FakeStudent().train(start_training)
    student.head.train(not start_training)  # a submodule in its own mode must keep it
    UnixSelector(4, 1.0, score_mode=score_mode).select(images, labels, student)
    assert student.calls[0]["training"] is (score_mode == "train")
    assert student.training is start_training
    assert student.fc.training is start_training and student.head.training is (not start_training)


def test_unix_restores_mode_when_student_raises():
    class Broken(FakeStudent):
        def forward(self, x):
            raise RuntimeError("boom")

    student = Broken().train()
    with pytest.raises(RuntimeError):
        UnixSelector(4, 1.0, score_mode="eval").select(*batch(), student)
    assert student.training


def test_unix_bf16_images():
    images, labels = batch()
    sel = UnixSelector(8, 1.0).select(images.bfloat16(), labels, lambda x: FakeStudent()(x.float()))
    assert sel.x.dtype == torch.bfloat16 and sel.m.dtype == torch.float32


def test_k_resolved_per_batch():
    student = FakeStudent()
    selector = build_selector("unix", k=0.75)
    assert selector.select(*batch(64), student).x.shape[0] == 48
    assert selector.select(*batch(20), student).x.shape[0] == 15  # a short last batch
    with pytest.raises(ValueError, match="at most the batch size N=20"):
        build_selector("unix", k=48).select(*batch(20), student)


# ---- RNG state: a resumed selector draws what an uninterrupted one would ----


@pytest.mark.parametrize("method", ["unix", "random"])
def test_state_dict_round_trip(method):
    images, labels = batch()
    student = FakeStudent()
    a = build_selector(method, k=6, seed=5)
    for _ in range(3):
        a.select(images, labels, student)
    state = a.state_dict()
    json.dumps(state)  # plain data
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    uninterrupted = [a.select(images, labels, student) for _ in range(4)]

    b = build_selector(method, k=6, seed=999)
    b.load_state_dict(state)
    resumed = [b.select(images, labels, student) for _ in range(4)]
    for u, r in zip(uninterrupted, resumed):
        assert torch.equal(u.x, r.x) and torch.equal(u.index, r.index)
        if method == "unix":
            assert torch.equal(u.m, r.m) and torch.equal(u.y_partner, r.y_partner)
    assert not torch.equal(uninterrupted[0].x, uninterrupted[1].x)  # the draws do move on


def test_load_state_dict_refuses_other_method():
    with pytest.raises(ValueError, match="random"):
        build_selector("unix", k=4).load_state_dict(build_selector("random", k=4).state_dict())


def test_same_seed_same_draws_different_seed_different():
    images, labels = batch()
    student = FakeStudent()
    m = [build_selector("unix", k=8, seed=s).select(images, labels, student).m for s in (1, 1, 2)]
    assert torch.equal(m[0], m[1]) and not torch.equal(m[0], m[2])


# ---- options ----


@pytest.mark.parametrize(
    "k,N,want",
    [
        (1, 64, 1),
        (48, 64, 48),
        (64, 64, 64),
        (0.75, 64, 48),
        (1.0, 64, 64),
        (0.001, 64, 1),
        (0.5, 3, 2),
        (np.int64(5), 8, 5),
        (np.float32(0.5), 8, 4),
        (0.75, 256, 192),
    ],
)
def test_resolve_k_good(k, N, want):
    got = resolve_k(k, N)
    assert got == want and type(got) is int


@pytest.mark.parametrize("k", [0, -1, 65, 0.0, -0.5, 1.5, 2.0, 48.0, float("nan"), True, False, "48", None])
def test_resolve_k_bad(k):
    with pytest.raises(ValueError, match="selection.k") as e:
        resolve_k(k, 64)
    assert "\n" not in str(e.value)


def test_resolve_k_message():
    with pytest.raises(ValueError) as e:
        resolve_k(300, 256)
    assert str(e.value) == "selection.k=300 must be at most the batch size N=256 (or a fraction in (0, 1])"


def test_build_selector_types():
    assert METHODS == (
        "kd",
        "random",
        "unix",
        "uncertainty",
        "mixup",
        "nonadaptive",
        "tlmixup",
        "tlcutmix",
        "tlcutmix_pick",
    )
    assert isinstance(build_selector("kd", k=48), KDSelector)  # options a method does not use are allowed
    assert isinstance(build_selector("random", k=48), RandomSelector)
    s = build_selector("unix", k=48, alpha=0.2, w=1.0, b=0.5, criterion="margin", score_mode="eval", seed=1)
    assert isinstance(s, UnixSelector) and s.name == "unix"
    assert (s.k, s.alpha, s.w, s.b, s.criterion, s.score_mode) == (48, 0.2, 1.0, 0.5, "margin", "eval")


@pytest.mark.parametrize(
    "method,kwargs,match",
    [
        ("cutout", {}, "kd, random, unix, uncertainty, mixup, nonadaptive, tlmixup, tlcutmix, tlcutmix_pick"),
        ("unix", {}, "selection.k is required"),
        ("random", {}, "selection.k is required"),
        ("unix", dict(k=4, criterion="variance"), "entropy, confidence, margin"),
        ("unix", dict(k=4, alpha=0.0), "selection.alpha"),
        ("unix", dict(k=4, alpha=-1.0), "selection.alpha"),
        ("unix", dict(k=4, w=0.0), "selection.w"),
        ("unix", dict(k=4, score_mode="test"), "train, eval"),
        ("unix", dict(k=4, b=1.5), "selection.b"),
        ("unix", dict(k=4, b=-1), "selection.b"),
        ("unix", dict(k=0), "selection.k"),
        ("random", dict(k=1.5), "selection.k"),
    ],
)
def test_build_selector_errors(method, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        build_selector(method, **kwargs)
    assert "\n" not in str(e.value)


def test_b_larger_than_short_batch():
    with pytest.raises(ValueError, match="selection.b=32"):
        build_selector("unix", k=4, b=32).select(*batch(16), FakeStudent())


def test_a_new_selector_is_one_small_class():
    @register("first_rows")
    class FirstRows(Selector):
        def __init__(self, k, *, seed=0):
            super().__init__(seed=seed)
            self.k = k

        def select(self, images, labels, student):
            index = torch.arange(resolve_k(self.k, images.shape[0]))
            return self._clean(images, labels, index)

    try:
        images, labels = batch()
        sel = build_selector("first_rows", k=3, alpha=0.5).select(images, labels, never_called)
        assert torch.equal(sel.x, images[:3])
        with pytest.raises(ValueError, match="first_rows"):
            build_selector("nope")
    finally:
        SELECTORS.pop("first_rows")


def test_every_method_and_the_graphed_twin_satisfy_the_protocol_the_step_types_against():
    from unixkd.selection import METHODS, GraphedUnixSelector, SelectsRows, build_selector

    for method in METHODS:
        sel = build_selector(method, k=0.5)
        assert isinstance(sel, SelectsRows), method
        assert isinstance(sel.scores_batch, bool) and isinstance(sel.needs_teacher, bool) and sel.name == method
    twin = GraphedUnixSelector.from_selector(build_selector("unix", k=0.5), mode="static")  # the CPU twin
    assert isinstance(twin, SelectsRows)

    class NoResume:  # selects, but cannot carry its draws across a resume
        name, scores_batch, needs_teacher = "x", False, False

        def select(self, images, labels, student): ...

    assert not isinstance(NoResume(), SelectsRows)
