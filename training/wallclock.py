"""Wall-clock budget mode (`selection.budget_convention=wallclock`): spend a share of KD's *time*, not its FLOPs.

The FLOP model prices a small student at F_s/F_t of the teacher, but a small student is memory- and
launch-bound, so its share of a step's time is larger than its share of the FLOPs. This module predicts
step times from measured phase times and picks k from them.

**The phase-time model.** A step is `profile`'s phases (training/measure/profile.py `walk_step`, the same clock and
hooks): the method's selection (scoring forward on all N + sort/mix; "selection (fused)" when it is one CUDA
graph replay), then the row phases on the k rows the teacher sees: teacher forward, student forward + loss,
student backward, optimizer. Per-row times are not constant in k (small batches use the device worse), so
each phase is measured at several k and interpolated linearly in k between them (extrapolated along the end
segments outside them):

    T_method(k) = Σ_sel S_p(k) + Σ_rows R_p(k)      S_p: the method's own points only
    T_kd        = Σ_p KD_p(N)                        R_p: the method's points and KD's (k = N rows)

The points: the method at k ≈ N/4, N/2, 3N/4 and KD at N (four configurations), stepped in interleaved rounds
(A B C D A B C D ...) after warm-up rounds, on one resident batch in the run's own dtype and memory format,
with the run's own device, precision, models, optimizer and fast path; each phase's median over the rounds.
Data loading is not in the model: the same loader feeds every method, and on a device it keeps up with it
costs ~0 (`bench --data pipeline` measures it); it does show in the measured fraction the run logs.

**The budget.** k is the largest k with T_method(k) <= budget · T_kd. A budget at or below what the
selection alone takes (its phases at k = 1, over T_kd) is refused in one line, as is one that leaves no k
(the smallest budget that fits is named).

**State.** The calibration runs real training steps, then puts back everything they touched (the student's
weights and BatchNorm statistics, the optimizer and its schedule, the grad scaler, every RNG) and uses
selectors and graphed teacher calls of its own, so a calibrated run trains exactly as a run told
`selection.k=<the chosen k>` (tested bitwise). Its record (k and every phase time) goes into each checkpoint
and `<out_dir>/wallclock.json`: a resumed run keeps its k without calibrating again.

Not covered: a `torch.compile`d student (train.compile_student) sees the calibration's row counts too and may
recompile for them; the k chosen is the run's, its compiled code then serves several shapes.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import random
import statistics
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .errors import UserError

CONVENTION = "wallclock"
ROW_PHASES = ("teacher_forward", "student_forward", "student_backward", "optimizer")
ON_N = ("scoring_forward", "selection_fused")  # the forward on all N images (+ sort/mix when fused): k-independent
NOT_MODELLED = ("data_wait",)  # a resident batch: ~0; the loader is the same for every method
RECORD = "wallclock.json"


class WallclockBudgetError(UserError):
    """A wall-clock budget this device cannot meet (at or below what the selection alone takes), in one line."""


def enabled(cfg) -> bool:
    return cfg.selection.budget is not None and cfg.selection.budget_convention == CONVENTION


# ---------------------------------------------------------------------------------------------------------
# the model: recorded phase times -> predicted step times -> k


def interpolate(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear y(x) through `points` (x, y); outside them, the end segments extended; one point: flat."""
    pts = sorted({px: py for px, py in points}.items())
    if not pts:
        raise ValueError("interpolate: no points")
    if len(pts) == 1:
        return pts[0][1]
    i = 1  # the segment pts[i-1]..pts[i] that holds x (the first or the last one outside the points)
    while i < len(pts) - 1 and x > pts[i][0]:
        i += 1
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def nondecreasing(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The closest non-decreasing values (least squares, pool-adjacent-violators) at the same x, sorted by x:
    more rows never take less time, so a noisy dip (one slow round at a small k) is averaged out, not followed."""
    blocks: list[list] = []  # [sum of y, count, xs]
    for x, y in sorted(points):
        blocks.append([y, 1, [x]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            y2, n2, xs2 = blocks.pop()
            blocks[-1][0] += y2
            blocks[-1][1] += n2
            blocks[-1][2] += xs2
    return [(x, total / n) for total, n, xs in blocks for x in xs]


@dataclass
class PhaseModel:
    """Measured phase times (ms) of one method at several k, and of KD at N; predicts step times."""

    method: str
    N: int
    points: list[dict]  # [{"k": k, "ms": {phase: median ms}, "samples": {phase: [ms, ...]}}] for the method
    kd: dict[str, float]  # {phase: median ms} of KD's step (N rows)
    meta: dict = field(default_factory=dict)  # how it was measured (device, precision, steps, ...)
    kd_samples: dict = field(default_factory=dict)  # {phase: [ms, ...]}: the raw times behind `kd`

    def selection_phases(self) -> list[str]:
        names = {p for pt in self.points for p in pt["ms"]}
        return sorted(p for p in names if p not in ROW_PHASES and p not in NOT_MODELLED)

    def phases_at(self, k: float) -> dict[str, float]:
        """Each modelled phase of the method's step at k rows (ms): the forward on all N is one number (the
        median of every measurement of it, whatever k it was measured beside); the other selection phases are
        interpolated through the method's points; the row phases through the method's points and KD's (N
        rows), made non-decreasing in k first."""
        out = {}
        for p in self.selection_phases():
            if p in ON_N:
                samples = [v for pt in self.points for v in pt.get("samples", {}).get(p, [])]
                out[p] = statistics.median(samples or [pt["ms"].get(p, 0.0) for pt in self.points])
            else:
                out[p] = interpolate([(pt["k"], pt["ms"].get(p, 0.0)) for pt in self.points], k)
        for p in ROW_PHASES:
            rows = [(pt["k"], pt["ms"][p]) for pt in self.points if p in pt["ms"]]
            if p in self.kd:
                rows.append((self.N, self.kd[p]))
            out[p] = interpolate(nondecreasing(rows), k) if rows else 0.0
        return out

    def predict_ms(self, k: float) -> float:
        return sum(self.phases_at(k).values())

    def kd_ms(self) -> float:
        return sum(v for p, v in self.kd.items() if p not in NOT_MODELLED)

    def fraction(self, k: float) -> float:
        return self.predict_ms(k) / self.kd_ms()

    def selection_ms(self) -> float:
        """What the selection alone takes (its phases at k = 1): the floor under any budget."""
        at = self.phases_at(1)
        return sum(at[p] for p in self.selection_phases())

    def choose_k(self, budget: float, k_min: int = 1) -> int:
        """The largest k in [k_min, N] with predicted step <= budget x KD's; WallclockBudgetError if none."""
        if not budget > 0:
            raise WallclockBudgetError(f"selection.budget={budget!r} must be > 0 (a share of KD's wall-clock)")
        kd = self.kd_ms()
        if not kd > 0:
            raise ValueError(f"wall-clock calibration: KD's predicted step is {kd} ms")
        for k in range(self.N, k_min - 1, -1):
            if self.predict_ms(k) <= budget * kd:
                return k
        smallest = min(self.fraction(k) for k in range(k_min, self.N + 1))
        sigma = self.selection_ms() / kd
        fits = f"the smallest budget that leaves k >= {k_min} rows for the teacher is {smallest:.4f}"
        if budget <= sigma:
            raise WallclockBudgetError(
                f"selection.budget={budget:g} (budget_convention=wallclock) is at or below what {self.method}'s "
                f"scoring pass alone takes on this device: {sigma:.4f} of KD's step "
                f"({self.selection_ms():.2f} of {kd:.2f} ms); {fits}"
            )
        raise WallclockBudgetError(
            f"selection.budget={budget:g} (budget_convention=wallclock) leaves no k for {self.method} on this "
            f"device (its scoring pass alone takes {sigma:.4f} of KD's {kd:.2f} ms step); {fits}"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PhaseModel:
        return cls(
            d["method"],
            int(d["N"]),
            [dict(p) for p in d["points"]],
            dict(d["kd"]),
            dict(d.get("meta", {})),
            dict(d.get("kd_samples", {})),
        )


@dataclass
class Calibration:
    """What a wall-clock budget decided: k, and the model and predictions it was decided from."""

    budget: float
    k: int
    model: PhaseModel
    flop_fraction: float | None = None  # paper convention, at k
    flop_fraction_measured: float | None = None

    @property
    def predicted_fraction(self) -> float:
        return self.model.fraction(self.k)

    @property
    def kd_step_ms(self) -> float:
        return self.model.kd_ms()

    def state_dict(self) -> dict:
        return {
            "kind": "unixkd wall-clock calibration",
            "budget": self.budget,
            "k": self.k,
            "N": self.model.N,
            "method": self.model.method,
            "predicted_fraction": self.predicted_fraction,
            "predicted_step_ms": self.model.predict_ms(self.k),
            "kd_step_ms": self.kd_step_ms,
            "flop_fraction": self.flop_fraction,
            "flop_fraction_measured": self.flop_fraction_measured,
            "model": self.model.to_dict(),
        }

    @classmethod
    def from_state(cls, state: dict) -> Calibration:
        return cls(
            float(state["budget"]),
            int(state["k"]),
            PhaseModel.from_dict(state["model"]),
            state.get("flop_fraction"),
            state.get("flop_fraction_measured"),
        )

    def describe(self) -> str:
        m = self.model
        meta = m.meta
        where = f"{meta.get('device', '?')}, mixed_precision={meta.get('mixed_precision', '?')}"
        ks = ", ".join(str(p["k"]) for p in m.points)
        flops = ""
        if self.flop_fraction is not None:
            flops = f"; FLOP fraction {self.flop_fraction:.4f} (paper), {self.flop_fraction_measured:.4f} (measured)"
        capped = " (capped at N)" if self.k == m.N and self.predicted_fraction < self.budget else ""
        return (
            f"wall-clock budget {self.budget:g} of KD ({m.method}, calibrated on {where}: {meta.get('steps', '?')} "
            f"steps at k = {ks} and KD at N = {m.N}): k = {self.k} of N = {m.N}{capped}, predicted step "
            f"{m.predict_ms(self.k):.2f} ms = {self.predicted_fraction:.4f} of KD's {self.kd_step_ms:.2f} ms{flops}"
        )


def decide(model: PhaseModel, budget: float, ledger=None, k_min: int = 1) -> Calibration:
    """The Calibration for `budget` on a measured `model` (the FLOP fractions from the run's ledger, if given)."""
    k = model.choose_k(budget, k_min)
    paper = measured = None
    if ledger is not None:
        from unixkd.selection import SELECTORS

        from .budget import cost_fraction

        scores = SELECTORS[model.method].scores_batch
        per = dict(N=model.N, Ft=ledger.Ft, Fs=ledger.Fs, scores_batch=scores)
        paper = cost_fraction(k, Bs=ledger.Fs, **per)
        measured = cost_fraction(k, Bs=ledger.Bs, **per) if ledger.Bs is not None else None
    return Calibration(budget, k, model, paper, measured)


# ---------------------------------------------------------------------------------------------------------
# measuring: the run's own step, phase by phase (profile's walk_step), at several k


def calibration_ks(N: int, k_min: int = 1) -> list[int]:
    """Where the method is measured: k ≈ N/4, N/2, 3N/4 (at least k_min, below N, no repeats)."""
    ks = sorted({min(N - 1, max(k_min, round(N * f))) for f in (0.25, 0.5, 0.75)})
    return [k for k in ks if k >= 1] or [N]


def needs_two_rows(student) -> bool:
    """A student with BatchNorm cannot train on 1 row (training._check_batchnorm_rows)."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in student.modules())


def measure(
    run,
    cfg,
    accelerator,
    num_classes: int,
    methods: list[str],
    *,
    steps: int = 6,
    warmup: int = 2,
    ks: list[int] | None = None,
) -> dict[str, PhaseModel]:
    """Phase times of each method at `ks` (default calibration_ks) and of KD at N, on `run`'s own step.

    Everything the steps change is put back afterwards (see the module docstring). Every process steps (DDP's
    collectives are part of the step); each returns its own times (`for_run` uses the main process's)."""
    from .measure.timing import synthetic_batch

    if steps < 1 or warmup < 0:
        raise UserError(f"wall-clock calibration: steps must be >= 1 and warmup >= 0, got {steps} and {warmup}")
    N = cfg.data.batch_size
    student = accelerator.unwrap_model(run.student)
    k_min = 2 if needs_two_rows(student) else 1
    ks = ks or calibration_ks(N, k_min)
    device = accelerator.device
    images, labels = synthetic_batch(cfg, num_classes, device, seed=cfg.seed)
    batches = itertools.repeat((images, labels))

    configs = [("kd", N, _calibration_step(run, cfg, accelerator, "kd", None))]
    for method in methods:
        configs += [(method, k, _calibration_step(run, cfg, accelerator, method, k)) for k in ks]
    times = _time_rounds(run, accelerator, [step for _, _, step in configs], batches, steps, warmup)
    medians = [{p: statistics.median(v) for p, v in t.items()} for t in times]
    meta = {
        "device": str(device),
        "mixed_precision": cfg.mixed_precision,
        "channels_last": cfg.train.channels_last,
        "steps": steps,
        "warmup": warmup,
        "batch": "one resident synthetic batch (dtype and memory format of the loaders), rounds interleaved",
        "timing": "training.measure.profile.walk_step: perf_counter at every phase boundary, device synced at each",
    }
    kd = medians[0]
    models = {}
    for method in methods:
        points = [
            {"k": k, "ms": medians[j], "samples": times[j]}
            for j, (m, k, _) in enumerate(configs)
            if m == method and j > 0
        ]
        models[method] = PhaseModel(method, N, points, kd, dict(meta), times[0])
    return models


def _calibration_step(run, cfg, accelerator, method: str, k: int | None):
    """`run`'s step with its own `method` selector at k (None: the config's), for the calibration alone."""
    from .build import make_selector
    from .fastpath import TeacherForward

    c = copy.deepcopy(cfg)
    c.selection.budget = None
    if k is not None:
        c.selection.k = k
    step = copy.copy(run.step)  # the same models, optimizer, schedule and step options
    step.selector = make_selector(c, accelerator, method, run.ledger, run.student)  # its own generator/graph
    step.on_select = None  # no sampling analytics for calibration steps
    call = run.step.teacher_call
    if isinstance(call, TeacherForward) and call.mode in ("graph", "static"):
        step.teacher_call = TeacherForward(call.teacher, call.mode, max_graphs=call.max_graphs, warmup=call.warmup)
    return step


def _time_rounds(run, accelerator, steps_to_time: list, batches, steps: int, warmup: int) -> list[dict]:
    """Phase times (ms) of each step, rounds interleaved over the steps, warm-up rounds left out; whatever the
    steps change is put back afterwards."""
    from unixkd.selection import GraphedUnixSelector

    from .measure.profile import ForwardMarks, _scoring_models, fold_fused, walk_step
    from .measure.timing import Clock

    clock = Clock(accelerator.device)
    times: list[dict[str, list[float]]] = [{} for _ in steps_to_time]
    with preserved(run, accelerator):
        for i in range(warmup + steps):
            for j, step in enumerate(steps_to_time):
                fused = isinstance(step.selector, GraphedUnixSelector)
                marks = ForwardMarks([] if fused else _scoring_models(step, run), clock.now)
                seconds = walk_step(step, batches, clock.now, marks)
                marks.remove()
                if fused:
                    seconds = fold_fused(seconds)
                if i >= warmup:
                    for p, s in seconds.items():
                        times[j].setdefault(p, []).append(s * 1e3)
    return times


@contextlib.contextmanager
def preserved(run, accelerator):
    """Put back what training steps change: weights and buffers, optimizer, schedule, grad scaler, RNGs."""
    student = accelerator.unwrap_model(run.student)
    weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
    optimizer = copy.deepcopy(run.optimizer.state_dict())
    scheduler = copy.deepcopy(run.scheduler.state_dict())
    scaler = getattr(accelerator, "scaler", None)
    scaler_state = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
    rng = (
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        random.getstate(),
        np.random.get_state(),
    )
    skipped = run.step.skipped
    try:
        yield
    finally:
        run.optimizer.zero_grad(set_to_none=True)
        student.load_state_dict(weights)
        run.optimizer.load_state_dict(optimizer)
        run.scheduler.load_state_dict(scheduler)
        if scaler is not None:
            scaler.load_state_dict(scaler_state)
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])
        random.setstate(rng[2])
        np.random.set_state(rng[3])
        run.step.skipped = skipped


# ---------------------------------------------------------------------------------------------------------
# the run's calibration: measured at the start, or the checkpoint's on a resume


def for_run(cfg, accelerator, run, num_classes: int, saved: dict | None = None) -> Calibration:
    """The run's Calibration: `saved` (a resume's, from its checkpoint) if given and for the same budget,
    else measured now on every process and decided on the main process (all ranks get the same k)."""
    from .distributed import on_main

    method, budget = cfg.selection.method, cfg.selection.budget
    if saved is not None:
        cal = Calibration.from_state(saved)
        if cal.budget == budget and cal.model.method == method and cfg.data.batch_size == cal.model.N:
            if accelerator.is_main_process:
                print(f"wall-clock budget: k = {cal.k} from the checkpoint's calibration (not measured again)")
            return cal
        if not cfg.resume_force:
            raise UserError(
                f"resume={cfg.resume}: the checkpoint was calibrated for selection.budget={cal.budget:g} "
                f"({cal.model.method}, N = {cal.model.N}), this run asks for {budget:g} ({method}, "
                f"N = {cfg.data.batch_size}); resume_force=true calibrates again"
            )
    s = cfg.selection
    models = measure(
        run, cfg, accelerator, num_classes, [method], steps=s.calibration_steps, warmup=s.calibration_warmup
    )
    k_min = 2 if needs_two_rows(accelerator.unwrap_model(run.student)) else 1

    def choose() -> dict:
        return decide(models[method], budget, run.ledger, k_min).state_dict()

    cal = Calibration.from_state(on_main(accelerator, choose))  # the main process's times decide for all
    if accelerator.is_main_process:
        print(cal.describe())
    return cal


def for_bench(cfg, accelerator, run, num_classes: int, methods: list[str]) -> dict[str, Calibration]:
    """`bench` with a wall-clock budget: one calibration of every budget method it times (KD measured once)."""
    from .config import BUDGET_METHODS

    if not enabled(cfg):
        return {}
    todo = [m for m in methods if m in BUDGET_METHODS]
    if not todo:
        return {}
    s = cfg.selection
    models = measure(run, cfg, accelerator, num_classes, todo, steps=s.calibration_steps, warmup=s.calibration_warmup)
    k_min = 2 if needs_two_rows(accelerator.unwrap_model(run.student)) else 1
    out = {m: decide(models[m], s.budget, run.ledger, k_min) for m in todo}
    for cal in out.values():
        print(cal.describe())
    return out


def bench_lines(result: dict) -> list[str]:
    """bench's table: each calibrated selector's predicted wall fraction against the one the bench measured."""
    lines = []
    for name, cal in (result.get("wallclock") or {}).items():
        measured = [r for r in result["rows"] if r["selector"] == name and r["step_ratio_kd"] is not None]
        got = ", ".join(f"{r['mode']} {r['runner']} {r['step_ratio_kd']:.4f}" for r in measured) or "-"
        lines.append(
            f"wall-clock budget {cal['budget']:g}: {name} k = {cal['k']} of {cal['N']}, predicted step/KD "
            f"{cal['predicted_fraction']:.4f} (FLOP/KD {cal['flop_fraction']:.4f}); measured step/KD: {got}"
        )
    return lines


def predicted_line(model: PhaseModel, k: int, flop_fraction: float | None) -> str:
    """One line for `cost`/`profile`: the predicted wall fraction at k beside the FLOP fraction."""
    flops = "" if flop_fraction is None else f" (FLOP fraction {flop_fraction:.4f}, paper convention)"
    return (
        f"predicted wall fraction of KD ({model.meta.get('device', '?')}): {model.method} at k = {k} of "
        f"N = {model.N}: {model.fraction(k):.4f}{flops}; step {model.predict_ms(k):.2f} ms vs KD "
        f"{model.kd_ms():.2f} ms"
    )


# ---------------------------------------------------------------------------------------------------------
# `cost --measure-time`: the pair's step timed on this machine, without a config or a dataset


def time_pair(
    *,
    teacher: str,
    student: str,
    image_size: int,
    N: int,
    k: int,
    num_classes: int,
    budget: float | None = None,
    steps: int = 3,
    warmup: int = 1,
) -> dict:
    """Predicted wall fractions of KD for UNIX and Random at k on this machine's default device (fp32, random
    weights, the trainer's default options), from a short calibration of UNIX and KD. Random's step is
    predicted from the row phases alone (its selection, a random gather, is not measured: ~0)."""
    from .config import Config
    from .distributed import make_accelerator
    from .measure.timing import build_timed_run

    cfg = Config()
    cfg.model.teacher, cfg.model.student, cfg.model.teacher_checkpoint = teacher, student, ""
    cfg.model.num_classes = num_classes
    cfg.data.image_size, cfg.data.batch_size = image_size, N
    cfg.selection.method = "unix"
    accelerator = make_accelerator(cfg)
    run = build_timed_run(cfg, accelerator, num_classes)
    model = measure(run, cfg, accelerator, num_classes, ["unix"], steps=steps, warmup=warmup)["unix"]
    rows = {p: v for p, v in model.phases_at(k).items() if p in ROW_PHASES}
    out = {
        "device": model.meta["device"],
        "steps": steps,
        "warmup": warmup,
        "kd_step_ms": model.kd_ms(),
        "unix_step_ms": model.predict_ms(k),
        "random_step_ms": sum(rows.values()),
        "wall_unix": model.fraction(k),
        "wall_random": sum(rows.values()) / model.kd_ms(),
        "model": model.to_dict(),
    }
    if budget is not None:
        k_min = 2 if needs_two_rows(accelerator.unwrap_model(run.student)) else 1
        out["budget"] = budget
        out["k_unix_for_wall_budget"] = model.choose_k(budget, k_min)
    return out


def format_time_pair(t: dict, flop_unix: float, flop_random: float) -> list[str]:
    ks = ", ".join(str(p["k"]) for p in t["model"]["points"])
    lines = [
        f"predicted wall-clock fraction of KD on {t['device']} ({t['steps']} timed steps each at k = {ks} and KD; "
        f"KD step {t['kd_step_ms']:.1f} ms):",
        f"  Random  {t['wall_random']:.4f}   (FLOPs {flop_random:.4f})",
        f"  UNIX    {t['wall_unix']:.4f}   (FLOPs {flop_unix:.4f})",
    ]
    if "k_unix_for_wall_budget" in t:
        lines.append(f"wall-clock budget {t['budget']}: UNIX k = {t['k_unix_for_wall_budget']}")
    return lines
