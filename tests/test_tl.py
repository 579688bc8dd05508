"""selection.tl (docs/algorithms.md §3): CutMix boxes, derangements, the TL views, pick, and what each TL selector hands on."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from unixkd.selection import LossWeights, build_selector
from unixkd.selection.tl import cutmix, cutmix_box, derangement, mixup, pick, pick_scores

N, C, H, W = 6, 4, 8, 10


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, H, W, generator=g), torch.randint(0, C, (N,), generator=g)


class Linear(nn.Module):
    def __init__(self, seed=0, scale=1.0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3 * H * W, C)
        self.scale = scale
        self.seen = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        return self.scale * self.fc(x.flatten(1))


def never_called(x):
    raise AssertionError("not expected to run")


# ---- CutMix ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lam,cy,cx,want",
    [
        # cut = sqrt(1 - λ): cut_h = int(8·cut), cut_w = int(10·cut); box = centre ± cut // 2, clipped
        (0.75, 4, 5, (2, 6, 3, 7)),  # cut 0.5: 4 x 5 -> half-widths 2, 2
        (0.75, 0, 0, (0, 2, 0, 2)),  # the same box at the corner, clipped to 2 x 2
        (0.0, 4, 5, (0, 8, 0, 10)),  # λ = 0: the whole image
        (1.0, 3, 3, (3, 3, 3, 3)),  # λ = 1: an empty box
        (0.36, 7, 9, (4, 8, 5, 10)),  # cut 0.8: 6 x 8 -> half-widths 3, 4; clipped at the bottom-right
    ],
)
def test_cutmix_box_by_hand(lam, cy, cx, want):
    assert cutmix_box(H, W, lam, cy, cx) == want


def kept_area(H: int, W: int, box: tuple[int, int, int, int]) -> float:
    """λ corrected to the clipped box: the share of each image's pixels that stay its own (the test's reference)."""
    y1, y2, x1, x2 = box
    return 1.0 - (y2 - y1) * (x2 - x1) / (H * W)


def test_cutmix_random_boxes_inside_and_lambda_is_the_kept_area():
    rng = np.random.default_rng(0)
    images, _ = batch()
    for _ in range(200):
        lam = rng.beta(1.0, 1.0)
        box = cutmix_box(H, W, lam, int(rng.integers(H)), int(rng.integers(W)))
        y1, y2, x1, x2 = box
        assert 0 <= y1 <= y2 <= H and 0 <= x1 <= x2 <= W
        partner = torch.as_tensor(derangement(rng, N))
        out = cutmix(images, partner, box)
        inside = torch.zeros(H, W, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert torch.equal(out[:, :, ~inside], images[:, :, ~inside])  # outside the box: untouched
        assert torch.equal(out[:, :, inside], images[partner][:, :, inside])  # inside: the partner's pixels
        kept = (~inside).sum().item() / (H * W)
        assert kept_area(H, W, box) == pytest.approx(kept)
        assert kept >= lam - 1e-9  # clipping and int() only shrink the box
        if x1 > 0 and y1 > 0 and x2 < W and y2 < H:  # unclipped: the box area is within a row/column of 1 - λ
            cut = math.sqrt(1 - lam)
            assert (y2 - y1) <= int(H * cut) and (x2 - x1) <= int(W * cut)


def test_derangement_has_no_fixed_point_and_reaches_every_other_row():
    rng = np.random.default_rng(1)
    seen = np.zeros((N, N), dtype=int)
    for _ in range(300):
        p = derangement(rng, N)
        assert sorted(p.tolist()) == list(range(N)) and not (p == np.arange(N)).any()
        seen[np.arange(N), p] += 1
    assert (np.diag(seen) == 0).all() and (seen + np.eye(N, dtype=int) > 0).all()
    with pytest.raises(ValueError, match="N >= 2"):
        derangement(rng, 1)


def test_mixup_view():
    images, _ = batch()
    perm = torch.tensor([3, 0, 1, 5, 2, 4])
    out = mixup(images, perm, 0.3)
    torch.testing.assert_close(out, 0.3 * images + 0.7 * images[perm])


# ---- the TL selectors --------------------------------------------------------------------------------


def test_tlcutmix_selection_replayed():
    images, labels = batch()
    seed, alpha = 5, 1.0
    sel = build_selector("tlcutmix", alpha=alpha, seed=seed).select(images, labels, never_called)
    rng = np.random.default_rng(seed)  # λ, box centre (y, x), derangement
    lam = rng.beta(alpha, alpha)
    cy, cx = int(rng.integers(H)), int(rng.integers(W))
    partner = derangement(rng, N)
    box = cutmix_box(H, W, lam, cy, cx)
    assert torch.equal(sel.extra, cutmix(images, torch.as_tensor(partner), box))
    # the clean batch is the main part: all N rows, labels for CE, no mixing
    assert sel.x is images and sel.y is labels and sel.m is None and sel.y_partner is None
    assert sel.index.tolist() == list(range(N)) and sel.extra_index.tolist() == list(range(N))
    assert sel.scored == 0 and sel.teacher_scored == 0 and sel.extra_teacher_logits is None
    assert sel.weights == LossWeights(ce=pytest.approx(0.1), kd=0.9, extra_kd=0.9)


def test_tlmixup_selection_replayed_and_tl_alpha():
    images, labels = batch(1)
    sel = build_selector("tlmixup", alpha=0.5, tl_alpha=0.7, seed=2).select(images, labels, never_called)
    rng = np.random.default_rng(2)
    lam = rng.beta(0.5, 0.5)
    perm = rng.permutation(N)
    torch.testing.assert_close(sel.extra, lam * images + (1 - lam) * images[perm])
    assert sel.weights == LossWeights(ce=pytest.approx(0.3), kd=0.7, extra_kd=0.7)


# ---- pick --------------------------------------------------------------------------------------------


def test_pick_scores_kl_by_hand():
    t = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    T = 2.0
    p = torch.softmax(t / T, 1)
    kl0 = (p[0] * (p[0] / 0.5).log()).sum().item()
    d = pick_scores(t, s, "kl", T)
    assert d[0].item() == pytest.approx(kl0, rel=1e-6) and d[1].item() == 0.0
    h = pick_scores(t, None, "teacher_entropy", T)
    p1 = torch.softmax(t, 1)[0]
    assert h[0].item() == pytest.approx(-(p1 * p1.log()).sum().item(), rel=1e-6)
    assert h[1].item() == pytest.approx(math.log(2), rel=1e-6)


def test_pick_takes_the_highest_and_keeps_order_on_ties():
    assert pick(torch.tensor([0.1, 0.5, 0.2, 0.5, 0.0]), 3).tolist() == [1, 3, 2]
    assert pick(torch.zeros(7), 4).tolist() == [0, 1, 2, 3]


def rebuild_pool(images, seed, pool):
    """The pick's pool from the same draws (per view: λ, box centre, derangement), rows v·N + i."""
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(pool):
        lam = rng.beta(1.0, 1.0)
        cy, cx = int(rng.integers(H)), int(rng.integers(W))
        partner = derangement(rng, N)
        views.append(cutmix(images, torch.as_tensor(partner), cutmix_box(H, W, lam, cy, cx)))
    return torch.cat(views)


def test_pick_with_student_equal_to_teacher_scores_zero_and_is_stable():
    images, labels = batch()
    model = Linear()
    x = rebuild_pool(images, seed=7, pool=3)
    with torch.no_grad():
        logits = model(x)
    assert torch.equal(pick_scores(logits, logits, "kl", 4.0), torch.zeros(3 * N))
    for _ in range(2):  # every d is 0: the pick keeps pool order, the first 4 rows of the first view
        sel = build_selector("tlcutmix_pick", alpha=1.0, pool=3, n_pick=4, seed=7).select(
            images, labels, model, teacher=model
        )
        assert sel.extra_index.tolist() == [0, 1, 2, 3]
        assert torch.equal(sel.extra, x[:4])


def test_pick_chooses_the_highest_kl_rows_and_reuses_teacher_logits():
    images, labels = batch(3)
    teacher, student = Linear(seed=1, scale=3.0), Linear(seed=2)
    pool, n_pick, T = 2, 5, 4.0
    sel = build_selector("tlcutmix_pick", alpha=1.0, pool=pool, n_pick=n_pick, temperature=T, seed=3).select(
        images, labels, student, teacher=teacher
    )

    x = rebuild_pool(images, seed=3, pool=pool)
    with torch.no_grad():
        t, s = teacher(x).double(), student(x).double()
    p_t, p_s = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    d = (p_t * (p_t.log() - p_s.log())).sum(1)  # KL(p_t || p_s) per pool row, float64
    want = torch.argsort(d, descending=True)[:n_pick]
    assert torch.equal(sel.extra, x[want])
    assert sel.extra_index.tolist() == (want % N).tolist()  # base image of pool row v·N + i is i
    torch.testing.assert_close(sel.extra_teacher_logits.double(), t[want], rtol=1e-5, atol=1e-5)
    assert sel.scored == pool * N and sel.teacher_scored == pool * N
    assert sel.x is images and sel.weights.extra_kd == 0.9


@pytest.mark.parametrize(
    "criterion,teacher_runs,student_runs",
    [("kl", True, True), ("teacher_entropy", True, False), ("student_entropy", False, True)],
)
def test_pick_runs_only_the_models_its_criterion_needs(criterion, teacher_runs, student_runs):
    images, labels = batch()
    teacher, student = Linear(seed=1), Linear(seed=2)
    sel = build_selector("tlcutmix_pick", alpha=1.0, pool=2, n_pick=1.0, pick_criterion=criterion, seed=0).select(
        images, labels, student, teacher=teacher
    )
    assert teacher.seen == ([2 * N] if teacher_runs else [])
    assert student.seen == ([2 * N] if student_runs else [])
    assert sel.teacher_scored == (2 * N if teacher_runs else 0) and sel.scored == (2 * N if student_runs else 0)
    assert (sel.extra_teacher_logits is not None) == teacher_runs
    assert sel.extra.shape == (N, 3, H, W)  # n_pick = 1.0 of N


@pytest.mark.parametrize("criterion", ["teacher_entropy", "student_entropy"])
def test_pick_entropy_criteria_pick_the_most_uncertain(criterion):
    images, labels = batch(4)
    model = Linear(seed=5)
    teacher, student = (model, never_called) if criterion == "teacher_entropy" else (never_called, model)
    sel = build_selector("tlcutmix_pick", alpha=1.0, pool=2, n_pick=3, pick_criterion=criterion, seed=1).select(
        images, labels, student, teacher=teacher
    )
    x = rebuild_pool(images, seed=1, pool=2)
    with torch.no_grad():
        p = torch.softmax(model(x).double(), 1)
    h = -(p * p.log()).sum(1)
    assert torch.equal(sel.extra, x[torch.argsort(h, descending=True)[:3]])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pool=1), "selection.pool"),
        (dict(n_pick=0), "selection.n_pick"),
        (dict(n_pick=2.5), "selection.n_pick"),
        (dict(pick_criterion="loss"), "kl, teacher_entropy, student_entropy"),
        (dict(tl_alpha=1.5), "tl_alpha"),
    ],
)
def test_pick_option_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        build_selector("tlcutmix_pick", alpha=1.0, **kwargs)
    assert "\n" not in str(e.value)


def test_pick_count_larger_than_the_pool_is_refused_per_batch():
    images, labels = batch()
    model = Linear()
    with pytest.raises(ValueError, match=r"pool·N = 12"):
        build_selector("tlcutmix_pick", alpha=1.0, pool=2, n_pick=13).select(images, labels, model, teacher=model)
