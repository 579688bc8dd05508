"""Selectors: from a batch (images, labels) and the student to the rows the teacher and student see.

One `Selector` per method: KD, Random+KD and UNIX here (docs/algorithms.md §2); the Table 5 ablations in
selection/ablations.py; TL-augmentation in selection/tl.py (docs/algorithms.md §3). Each owns a seeded numpy Generator
that draws λ, the partner permutation and random subsets on the host, so the tensor math stays pure
(selection/unix.py) and `state_dict()` resumes the draws exactly. A new method is one small class
with `@register("name")`; `build_selector` passes it the options its `__init__` names.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .uncertainty import check_criterion
from .unix import unix_mix

SCORE_MODES = ("train", "eval")
PICK_CRITERIA = ("kl", "teacher_entropy", "student_entropy")

Student = Callable[[Tensor], Tensor]  # images [N, ...] -> logits [N, classes]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the parts of one step's loss, when a method fixes them (TL: α = 0.9 -> 0.1·CE + 0.9·KD)."""

    ce: float  # CE on the main rows (mixed labels where mixed)
    kd: float  # KD (KL·T²) on the main rows
    extra_kd: float  # KD on the extra teacher-labelled view (no CE there)


@dataclass
class Selection:
    """The rows to distil on, and what the optional CE, the cost ledger and the analytics need about them.

    Main rows `x` get KD (+ optional CE with mixed labels). A method may add an `extra` view that the
    teacher labels and the student learns by KL only (TL-augmentation, docs/algorithms.md §3); if the selector already
    ran the teacher on it (pick), it hands those logits on so the step does not pay twice.
    """

    x: Tensor  # [k, ...] rows for teacher + student
    y: Tensor | None  # [k] labels of the base images (None if labels not given)
    y_partner: Tensor | None  # [k] labels of the partners (None when not mixed)
    m: Tensor | None  # [k] partner weights (None when not mixed); CE = (1-m)CE(y)+m CE(y_partner)
    index: Tensor  # [k] batch row of each base image (for sampling analytics)
    scored: int  # images the no-grad student scoring forward ran on (N for unix, 0 for kd/random)
    extra: Tensor | None = None  # [n, ...] extra view, KL only (TL); None for UNIX-family methods
    extra_index: Tensor | None = None  # [n] batch row of the base image of each extra row
    extra_teacher_logits: Tensor | None = None  # [n, classes] teacher logits the selector already computed
    teacher_scored: int = 0  # images the no-grad teacher forward ran on inside selection
    weights: LossWeights | None = None  # None: the config's loss.ce_weight / loss.kd_weight


# ---- option checks: one-line ValueErrors that name the key and what is allowed ----


def check_k(k) -> None:
    """k is an int count >= 1 or a float fraction in (0, 1] (the batch size is not known yet)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        raise ValueError(f"selection.k={k!r} must be an int count >= 1 or a float fraction in (0, 1]")
    if isinstance(k, numbers.Integral):
        if k < 1:
            raise ValueError(f"selection.k={k} must be at least 1 (or a fraction in (0, 1])")
    elif not 0 < k <= 1:
        raise ValueError(f"selection.k={k} must be a fraction in (0, 1] (or an int count >= 1)")


def resolve_k(k, N: int) -> int:
    """Rows to keep from a batch of N: an int count 1 <= k <= N, or a float fraction -> max(1, round(k·N)).

    Note 1 (int) is one row while 1.0 (float) is all N rows; round() is Python's (half to even).
    """
    check_k(k)
    if isinstance(k, numbers.Integral):
        if k > N:
            raise ValueError(f"selection.k={k} must be at most the batch size N={N} (or a fraction in (0, 1])")
        return int(k)
    return max(1, int(round(k * N)))


def check_b(b) -> None:
    """b is None (N // 2), an int count >= 0 or a float fraction in (0, 1)."""
    if b is None:
        return
    if isinstance(b, bool) or not isinstance(b, numbers.Real):
        raise ValueError(f"selection.b={b!r} must be None (N // 2), an int count >= 0 or a fraction in (0, 1)")
    if isinstance(b, numbers.Integral):
        if b < 0:
            raise ValueError(f"selection.b={b} must be at least 0 (or None, or a fraction in (0, 1))")
    elif not 0 < b < 1:
        raise ValueError(f"selection.b={b} must be a fraction in (0, 1) (or None, or an int count >= 0)")


def resolve_b(b, N: int) -> int:
    """Images mixed with c_r < 0.5 in a batch of N: None -> N // 2, a count <= N, or round(b·N)."""
    check_b(b)
    if b is None:
        return N // 2
    if isinstance(b, numbers.Integral):
        if b > N:
            raise ValueError(f"selection.b={b} must be at most the batch size N={N} (or a fraction in (0, 1))")
        return int(b)
    return int(round(b * N))


def check_positive(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < math.inf):
        raise ValueError(f"selection.{key}={value!r} must be a finite number > 0")


def check_score_mode(score_mode: str) -> None:
    if score_mode not in SCORE_MODES:
        raise ValueError(f"selection.score_mode={score_mode!r} is not one of {', '.join(SCORE_MODES)}")


def check_tl_alpha(tl_alpha) -> None:
    """TL's loss split: (1 - α)·CE + α·KD; α in [0, 1]."""
    if isinstance(tl_alpha, bool) or not isinstance(tl_alpha, numbers.Real) or not 0 <= tl_alpha <= 1:
        raise ValueError(f"selection.tl_alpha={tl_alpha!r} must be a number in [0, 1]")


def check_pool(pool) -> None:
    """Mixed views per image in the pick pool: an int >= 2 (docs/algorithms.md §3)."""
    if isinstance(pool, bool) or not isinstance(pool, numbers.Integral) or pool < 2:
        raise ValueError(f"selection.pool={pool!r} must be an int >= 2 (mixed views per image)")


def check_pick_criterion(pick_criterion: str) -> None:
    if pick_criterion not in PICK_CRITERIA:
        raise ValueError(f"selection.pick_criterion={pick_criterion!r} is not one of {', '.join(PICK_CRITERIA)}")


def check_n_pick(n_pick, pool: int) -> None:
    """n_pick is an int count >= 1 or a float fraction of N in (0, pool] (N is not known yet)."""
    if isinstance(n_pick, bool) or not isinstance(n_pick, numbers.Real):
        raise ValueError(f"selection.n_pick={n_pick!r} must be an int count >= 1 or a float fraction of N")
    if isinstance(n_pick, numbers.Integral):
        if n_pick < 1:
            raise ValueError(f"selection.n_pick={n_pick} must be at least 1 (or a fraction of N)")
    elif not 0 < n_pick <= pool:
        raise ValueError(f"selection.n_pick={n_pick} must be a fraction of N in (0, pool = {pool}]")


def resolve_n_pick(n_pick, N: int, pool: int) -> int:
    """Pool rows to train on: an int count 1 <= n <= pool·N, or a float fraction of N -> max(1, round(n·N))."""
    check_n_pick(n_pick, pool)
    if isinstance(n_pick, numbers.Integral):
        if n_pick > pool * N:
            raise ValueError(f"selection.n_pick={n_pick} must be in [1, pool·N = {pool * N}]")
        return int(n_pick)
    return max(1, int(round(n_pick * N)))


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A host tensor on `device` without a host sync: to CUDA through page-locked memory, asynchronously.

    A plain copy from pageable memory (`torch.as_tensor(index, device="cuda")`) ends in cudaStreamSynchronize:
    the host waits for all queued GPU work, every step. From pinned memory the copy is queued like a kernel;
    the caching host allocator keeps the pinned block until it has run.
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


# ---- the scoring forward (docs/algorithms.md §2 step 1) ----


def score(student: Student, images: Tensor, score_mode: str = "train") -> Tensor:
    """Student logits on all N images, no grad, as float32 [N, classes].

    score_mode="train" (the authors' default): BatchNorm uses batch statistics (and, like theirs,
    updates its running stats). "eval": running statistics. If the student is an nn.Module in the
    other mode, it is switched for this forward only, and every submodule's flag is restored after.
    A plain callable is called as it is.
    """
    check_score_mode(score_mode)
    train = score_mode == "train"
    saved = []
    if isinstance(student, torch.nn.Module) and student.training != train:
        saved = [(module, module.training) for module in student.modules()]
        student.train(train)
    try:
        with torch.no_grad():
            logits = student(images)
    finally:
        if saved:
            student.train(saved[0][1])
            for module, was_training in saved:  # submodules that were in their own mode (frozen BN)
                module.training = was_training
    return logits.float()


# ---- selectors ----

SELECTORS: dict[str, type[Selector]] = {}


@runtime_checkable
class SelectsRows(Protocol):
    """What the training step asks of a selector (every `Selector` below, and `GraphedUnixSelector`).

    `select(images, labels, student)` returns the `Selection` for one batch (a selector with `needs_teacher`
    is also given `teacher=`); `state_dict`/`load_state_dict` carry its random draws across a resume;
    `scores_batch` says whether it runs the no-grad scoring forward on all N images (what the cost ledger and
    the budget charge); `name` is the method it implements.
    """

    name: str
    scores_batch: bool
    needs_teacher: bool

    def select(self, images: Tensor, labels: Tensor | None, student: Student, **kw) -> Selection: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def register(name: str):
    """Class decorator: make a Selector available to build_selector(name)."""

    def add(cls: type[Selector]) -> type[Selector]:
        cls.name = name
        SELECTORS[name] = cls
        return cls

    return add


class Selector:
    """Turns (images [N, ...], labels [N] or None, student) into a Selection; owns its RNG.

    `scores_batch`: the method runs the no-grad student forward on all N images (the budget mode charges
    it). `needs_teacher`: `select` also takes `teacher=` (a callable, eval mode) for scoring (pick).
    """

    name = "base"
    scores_batch = False
    needs_teacher = False

    def __init__(self, *, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def select(self, images: Tensor, labels: Tensor | None, student: Student) -> Selection:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The RNG state (plain dict of str/int; torch.save(weights_only) and JSON safe)."""
        return {"method": self.name, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Resume the draws: the next λ/perm/subset equal those of an uninterrupted selector."""
        if state.get("method") != self.name:
            raise ValueError(f"selector state is for method {state.get('method')!r}, not {self.name!r}")
        self.rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        options = {k: v for k, v in vars(self).items() if k != "rng"}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in options.items())})"

    def _device_index(self, index: np.ndarray, images: Tensor) -> Tensor:
        """Rows drawn on the host, as a LongTensor on the images' device, without a host-device sync."""
        return to_device(torch.as_tensor(index), images.device)

    @staticmethod
    def _clean(images: Tensor, labels: Tensor | None, index: Tensor) -> Selection:
        y = None if labels is None else labels[index]
        return Selection(x=images[index], y=y, y_partner=None, m=None, index=index, scored=0)


@register("kd")
class KDSelector(Selector):
    """Conventional KD: all N rows as they are, no scoring forward, no RNG draws."""

    def select(self, images, labels, student):
        index = torch.arange(images.shape[0], device=images.device)
        return Selection(x=images, y=labels, y_partner=None, m=None, index=index, scored=0)


@register("random")
class RandomSelector(Selector):
    """Random+KD: k random rows, clean, no scoring forward. Indices sorted (batch order)."""

    def __init__(self, k, *, seed: int = 0):
        super().__init__(seed=seed)
        check_k(k)
        self.k = k

    def select(self, images, labels, student):
        N = images.shape[0]
        k = resolve_k(self.k, N)
        index = np.sort(self.rng.permutation(N)[:k])
        return self._clean(images, labels, self._device_index(index, images))


@register("unix")
class UnixSelector(Selector):
    """UNIX (docs/algorithms.md §2 steps 1-8): score all N, sort by uncertainty, mix with a random partner, keep k."""

    scores_batch = True

    def __init__(
        self, k, alpha, w: float = 10.0, b=None, criterion: str = "entropy", score_mode: str = "train", *, seed: int = 0
    ):
        super().__init__(seed=seed)
        check_k(k)
        check_positive("alpha", alpha)
        check_positive("w", w)
        check_b(b)
        check_criterion(criterion)
        check_score_mode(score_mode)
        self.k, self.alpha, self.w, self.b = k, alpha, w, b
        self.criterion, self.score_mode = criterion, score_mode

    def select(self, images, labels, student):
        N = images.shape[0]
        k, b = resolve_k(self.k, N), resolve_b(self.b, N)
        return self.select_drawn(images, labels, student, k, b, *self.draw(N))

    def select_drawn(self, images, labels, student, k: int, b: int, lam: float, perm: np.ndarray) -> Selection:
        """Steps 1-3 and 6-8 on this step's draws (λ, perm from `draw`): the eager path, also the graph's fallback."""
        logits = score(student, images, self.score_mode)  # step 1
        mix = unix_mix(
            images,
            logits,
            k=k,
            lam=lam,
            perm=self._device_index(perm, images),  # steps 2-3, 6-8
            w=self.w,
            b=b,
            criterion=self.criterion,
        )
        return self.selection(mix, labels, images.shape[0])

    def draw(self, N: int) -> tuple[float, np.ndarray]:
        """This step's random draws, host-side: one λ ~ Beta(α, α) and a permutation of the original batch."""
        lam = float(self.rng.beta(self.alpha, self.alpha))  # step 5: one λ per step
        perm = self.rng.permutation(N)  # step 4: partners from the original batch
        return lam, perm

    @staticmethod
    def selection(mix, labels: Tensor | None, N: int) -> Selection:
        y = y_partner = None
        if labels is not None:
            y, y_partner = labels[mix.rank], labels[mix.partner]
        return Selection(x=mix.x, y=y, y_partner=y_partner, m=mix.m, index=mix.rank, scored=N)


def build_selector(
    method: str,
    *,
    k=None,
    alpha: float = 1.0,
    w: float = 10.0,
    b=None,
    criterion: str = "entropy",
    score_mode: str = "train",
    tl_alpha: float = 0.9,
    pool: int = 2,
    n_pick=1.0,
    pick_criterion: str = "kl",
    temperature: float = 4.0,
    seed: int = 0,
) -> Selector:
    """The selector for `method` (one of METHODS), given the options it uses (the others are ignored).

    k: int count or float fraction of each batch; b: None (N // 2), int count or fraction in (0, 1).
    TL (selection/tl.py): tl_alpha splits the clean-batch loss; pool, n_pick, pick_criterion and the KD
    temperature drive the pick.

    A user's options are checked once, where they enter: the config (training/config.py), one line naming the
    key. Below it, each selector's `__init__` checks only its own options (cheap, for callers of this library
    API), and `unix_mix` its tensors.
    """
    if method not in SELECTORS:
        raise ValueError(f"selection.method={method!r} is not one of {', '.join(SELECTORS)}")
    cls = SELECTORS[method]
    options = dict(
        k=k,
        alpha=alpha,
        w=w,
        b=b,
        criterion=criterion,
        score_mode=score_mode,
        tl_alpha=tl_alpha,
        pool=pool,
        n_pick=n_pick,
        pick_criterion=pick_criterion,
        temperature=temperature,
        seed=seed,
    )
    params = inspect.signature(cls.__init__).parameters
    for name, param in params.items():
        if param.default is inspect.Parameter.empty and options.get(name, ...) is None:
            raise ValueError(f"selection.{name} is required for method {method!r}")
    return cls(**{name: value for name, value in options.items() if name in params})
