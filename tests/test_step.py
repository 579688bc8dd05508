"""training.step: what each method's step runs (counted on the models themselves) and the loss it builds."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unixkd.selection import build_selector
from unixkd.training.features import FeatureDistill, at_loss
from unixkd.training.step import DistillStep, step_counts

N, K, C, S = 8, 4, 5, 6


class TinyNet(nn.Module):
    """Two conv stages and a head, no BatchNorm (a row's output does not depend on its batch); logs its calls."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.stage1 = nn.Conv2d(3, 4, 3, padding=1)
        self.stage2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(6, C)
        self.calls = []  # (rows, grad enabled) per run of forward()
        self.module_calls = []  # (rows, grad enabled) per call of the module (what DDP would wrap)
        self.register_forward_pre_hook(
            lambda m, args: m.module_calls.append((args[0].shape[0], torch.is_grad_enabled()))
        )

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        f2 = F.relu(self.stage2(F.relu(self.stage1(x))))
        return self.head(f2.mean((2, 3)))

    def features(self, x):
        """The stage modules' own outputs (what a forward hook on them sees: before the ReLU)."""
        f1 = self.stage1(x)
        return [f1, self.stage2(F.relu(f1))]


class CPUAccelerator:
    """What DistillStep uses of an Accelerator, on one CPU process."""

    def autocast(self):
        return contextlib.nullcontext()

    def unwrap_model(self, model):
        return model

    def backward(self, loss):
        loss.backward()


def make_step(method, teacher=True, features=None, **options):
    student = TinyNet(0)
    t = TinyNet(1).eval().requires_grad_(False) if teacher else None
    opt = torch.optim.SGD(student.parameters(), lr=0.0)  # lr 0: the weights stay, so phases can be re-run
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    selector = build_selector(method, k=K, alpha=1.0, seed=3, **options)
    step = DistillStep(
        CPUAccelerator(),
        student,
        t,
        opt,
        sched,
        selector,
        temperature=4.0,
        kd_weight=1.0,
        ce_weight=0.5,
        features=features,
    )
    return step, student, t


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, S, S, generator=g), torch.randint(0, C, (N,), generator=g)


def rows(calls, grad=None):
    return sum(n for n, g in calls if grad is None or g == grad)


EXPECTED = {  # (teacher images, student forward images, student backward images) per step, docs/algorithms.md §1 and §3
    "kd": (N, N, N),
    "random": (K, K, K),
    "mixup": (K, K, K),
    "unix": (K, N + K, K),
    "uncertainty": (K, N + K, K),
    "nonadaptive": (K, N + K, K),
    "tlmixup": (2 * N, 2 * N, 2 * N),
    "tlcutmix": (2 * N, 2 * N, 2 * N),
    "tlcutmix_pick": (N + 2 * N, 2 * N + 2 * N, 2 * N),  # pool 2N scored by both; picked logits reused
}


@pytest.mark.parametrize("method", list(EXPECTED))
def test_counts_match_what_the_models_ran(method):
    step, student, teacher = make_step(method)
    images, labels = batch()
    loss, counts = step(images, labels)
    assert torch.isfinite(loss)
    assert (counts.teacher, counts.student_fwd, counts.student_bwd) == EXPECTED[method]
    assert counts.batch == N
    assert counts.teacher == rows(teacher.calls)
    assert counts.student_fwd == rows(student.calls)
    assert counts.student_bwd == rows(student.calls, grad=True)  # the rows of the one call with grad
    assert len([c for c in student.module_calls if c[1]]) == 1 and all(not g for _, g in teacher.calls)
    # inside that one call: one forward per view (TL: the clean batch, then the extra view)
    views = [n for n, g in student.calls if g]
    assert views == ([N, counts.student_bwd - N] if method.startswith("tl") else [counts.student_bwd])


@pytest.mark.parametrize(
    "criterion,expected",
    [
        ("teacher_entropy", (3 * N, 2 * N, 2 * N)),  # teacher on N + pool; no student scoring pass
        ("student_entropy", (N + N, 2 * N + 2 * N, 2 * N)),  # teacher labels the picked rows in the step
    ],
)
def test_pick_counts_per_criterion(criterion, expected):
    step, student, teacher = make_step("tlcutmix_pick", pick_criterion=criterion)
    _, counts = step(*batch())
    assert (counts.teacher, counts.student_fwd, counts.student_bwd) == expected
    assert (counts.teacher, counts.student_fwd) == (rows(teacher.calls), rows(student.calls))


def test_without_a_teacher_nothing_is_charged_to_it():
    step, student, _ = make_step("kd", teacher=False)
    _, counts = step(*batch())
    assert (counts.teacher, counts.student_fwd, counts.student_bwd) == (0, N, N)


def kd_ref(s, t, T=4.0):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T


def test_tl_loss_is_ce_and_kd_on_clean_plus_kl_on_the_extra_view():
    step, student, teacher = make_step("tlcutmix", tl_alpha=0.9)
    images, labels = batch()
    sel = step.select(images, labels)
    loss = step.student_loss(sel, step.teacher_forward(sel))
    with torch.no_grad():
        s, t = student(torch.cat([sel.x, sel.extra])), teacher(torch.cat([sel.x, sel.extra]))
    want = 0.1 * F.cross_entropy(s[:N], labels) + 0.9 * kd_ref(s[:N], t[:N]) + 0.9 * kd_ref(s[N:], t[N:])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)  # the config's ce 0.5 / kd 1.0 are replaced


def test_unix_family_loss_uses_the_config_weights_and_mixed_labels():
    step, student, teacher = make_step("nonadaptive")
    images, labels = batch(1)
    sel = step.select(images, labels)
    loss = step.student_loss(sel, step.teacher_forward(sel))
    with torch.no_grad():
        s, t = student(sel.x), teacher(sel.x)
    ce = (
        (1 - sel.m) * F.cross_entropy(s, sel.y, reduction="none")
        + sel.m * F.cross_entropy(s, sel.y_partner, reduction="none")
    ).mean()
    assert loss.item() == pytest.approx((1.0 * kd_ref(s, t) + 0.5 * ce).item(), rel=1e-5)


def test_at_on_the_main_rows_only():
    features = FeatureDistill("at", 1000.0, ["stage1", "stage2"], ["stage1", "stage2"])
    step, student, teacher = make_step("tlmixup", features=features)
    images, labels = batch(2)
    sel = step.select(images, labels)
    t_out = step.teacher_forward(sel)
    assert [f.shape[0] for f in t_out.features] == [2 * N, 2 * N]  # captured on the one teacher forward
    loss = step.student_loss(sel, t_out)
    x = torch.cat([sel.x, sel.extra])
    with torch.no_grad():
        s, t = student(x), teacher(x)
        fs, ft = student.features(sel.x), teacher.features(sel.x)
    want = (
        0.1 * F.cross_entropy(s[:N], labels)
        + 0.9 * kd_ref(s[:N], t[:N])
        + 0.9 * kd_ref(s[N:], t[N:])
        + 1000.0 * (at_loss(fs[0], ft[0]) + at_loss(fs[1], ft[1]))
    )
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_step_counts_from_a_selection_alone():
    images, labels = batch()
    sel = build_selector("unix", k=K, alpha=1.0).select(images, labels, TinyNet(0))
    c = step_counts(N, sel, has_teacher=True)
    assert (c.batch, c.teacher, c.student_fwd, c.student_bwd) == (N, K, N + K, K)
