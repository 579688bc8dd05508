"""`profile`: where one training step's wall-clock goes, phase by phase, next to where its FLOPs go.

The step is `build_run`'s `DistillStep`, called phase by phase (select → teacher forward → student forward and
loss → backward → optimizer) on batches from the configured DALI pipeline. `select` is split generically:
forward hooks on the models it calls (the student's scoring forward, and any model a selector scores with)
give "scoring forward"; the rest of select (uncertainty, sort, random draws, mixing) is "sort + mix".

Two walks over the same phases: one step under FlopCounterMode (with the grouped-convolution backward fix)
reads each phase's FLOPs; then the timed steps read the clock, with a device sync at every phase boundary
(so a profiled step is a little slower than a benchmarked one: compare shares, not totals, with `bench`).
FlopCounterMode counts convolutions and matrix products; elementwise work (mixing, softmax, BatchNorm,
the SGD update) counts 0, so those phases show time and no FLOPs. MFU per phase: its FLOPs over its median
time over the device's peak (training/measure/timing.py PEAK_FLOPS; none on a CPU).

The fast path (--fast-path fused, the default: the run as it resolves; eager: plain selector, teacher and
student modules called directly). The FLOP walk is always the eager twin of the step: a CUDA graph's capture
runs its body in warm-up calls first (FlopCounterMode would count them), and its replays are invisible to
the counter. A graphed selection is one replay, where forward hooks do not fire: it is reported as one phase,
"selection (fused)" (scoring forward + sort + mix, time and FLOPs summed), instead of the split.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from pathlib import Path

from unixkd.selection import GraphedUnixSelector

from .. import wallclock
from ..budget import cost_fraction
from ..build import make_selector
from ..config import Config, ConfigError, to_dict
from ..cost import flop_counter
from ..distributed import make_accelerator
from ..errors import UserError
from ..fastpath import eager_step, step_modes
from ..files import atomic_write_json, keep_previous, save_figure
from .timing import (
    Clock,
    build_timed_run,
    endless,
    environment,
    median,
    mfu,
    peak_flops,
    synthetic_batch,
    teacher_weights,
    timing_data,
)

PHASES = (
    "data_wait",
    "scoring_forward",
    "sort_mix",
    "teacher_forward",
    "student_forward",
    "student_backward",
    "optimizer",
)
PHASES_FUSED = (
    "data_wait",
    "selection_fused",
    "teacher_forward",
    "student_forward",
    "student_backward",
    "optimizer",
)  # a graphed selection: scoring forward + sort + mix in one replay
LABELS = {
    "data_wait": "data wait",
    "scoring_forward": "scoring fwd",
    "sort_mix": "sort + mix",
    "selection_fused": "selection (fused)",
    "teacher_forward": "teacher fwd",
    "student_forward": "student fwd",
    "student_backward": "student bwd",
    "optimizer": "optimizer",
}
FAST_PATHS = ("fused", "eager")


class ForwardMarks:
    """Forward hooks on `modules` that, while active, add up `read()` across their outermost forward calls."""

    def __init__(self, modules, read: Callable[[], float]):
        self.read, self.depth, self.active, self.total, self._enter = read, 0, False, 0.0, 0.0
        self.handles = []
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def _pre(self, module, args):
        if self.active:
            self.depth += 1
            if self.depth == 1:
                self._enter = self.read()

    def _post(self, module, args, output):
        if self.active:
            if self.depth == 1:
                self.total += self.read() - self._enter
            self.depth -= 1

    def start(self) -> None:
        self.active, self.total, self.depth = True, 0.0, 0

    def stop(self) -> float:
        self.active = False
        return self.total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def walk_step(step, batches, read: Callable[[], float], marks: ForwardMarks) -> dict[str, float]:
    """One training step, phase by phase; returns how much `read()` advanced in each phase."""
    r0 = read()
    images, labels = next(batches)
    r1 = read()
    marks.start()
    sel = step.select(images, labels)
    if step.on_select is not None:  # as DistillStep.__call__ does (sampling analytics, when set)
        step.on_select(labels, sel)
    r2 = read()
    scoring = marks.stop()
    t_logits = step.teacher_forward(sel)
    r3 = read()
    loss = step.student_loss(sel, t_logits)
    r4 = read()
    step.backward(loss)
    r5 = read()
    step.optimizer_step(loss)
    r6 = read()
    return {
        "data_wait": r1 - r0,
        "scoring_forward": scoring,
        "sort_mix": r2 - r1 - scoring,
        "teacher_forward": r3 - r2,
        "student_forward": r4 - r3,
        "student_backward": r5 - r4,
        "optimizer": r6 - r5,
    }


def fold_fused(phases: dict[str, float]) -> dict[str, float]:
    """The split of `select` summed into one "selection_fused" phase (PHASES_FUSED order)."""
    merged = {**phases, "selection_fused": phases["scoring_forward"] + phases["sort_mix"]}
    return {p: merged[p] for p in PHASES_FUSED}


def profile(
    cfg: Config,
    *,
    selector: str | None = None,
    steps: int = 20,
    warmup: int = 3,
    out_dir: str,
    fast_path: str = "fused",
    note: str = "",
    accelerator=None,
    data: str = "pipeline",
) -> dict:
    """Profile `selector` (default: the config's) on `cfg`; writes out_dir/profile.json and profile.png.

    `data`: `pipeline` (the configured dataset's loader, DALI) or `synthetic` (one random batch resident on the
    device, as bench's synthetic mode: no dataset, no DALI; data_wait is then ~0)."""
    method = selector or cfg.selection.method
    _check_options(method, fast_path, data, steps, warmup)
    cfg = copy.deepcopy(cfg)
    cfg.selection.method = method
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or make_accelerator(cfg)
    if accelerator.num_processes > 1:
        raise UserError("profile runs on one process; start it with python, not accelerate launch --multi_gpu")
    device = accelerator.device

    loaders = timing_data(cfg, accelerator, [data])
    num_classes = cfg.model.num_classes or len(loaders.classes)
    run = build_timed_run(cfg, accelerator, num_classes)
    calibrated = wallclock.for_bench(cfg, accelerator, run, num_classes, [method])  # a wall-clock budget's k
    if method in calibrated:
        run.step.selector = make_selector(cfg, accelerator, method, run.ledger, k=calibrated[method].k)
    step = run.step if fast_path == "fused" else eager_step(run.step)
    fused = isinstance(step.selector, GraphedUnixSelector)
    phases_used = PHASES_FUSED if fused else PHASES
    if data == "synthetic":
        batches = itertools.repeat(synthetic_batch(cfg, num_classes, device, seed=cfg.seed))
    else:
        batches = endless(loaders.train)

    flops = _count_flops(step, run, batches, fused)
    ms = _time_phases(step, run, batches, device, fused, phases_used, warmup, steps)
    args = {"steps": steps, "warmup": warmup, "fast_path": fast_path, "data": data}
    result = _record(cfg, accelerator, run, num_classes, method, step, calibrated, flops, ms, note, args)
    kept = [k for k in (keep_previous(out / name) for name in ("profile.json", "profile.png")) if k is not None]
    if kept:  # a rerun into the same folder keeps the earlier result beside the new one
        print(f"the earlier profile is now {', '.join(str(k) for k in kept)}")
    atomic_write_json(out / "profile.json", result, indent=1)
    try:
        plot(result, out / "profile.png")
    except ImportError as e:  # a bare GPU box without matplotlib (a declared dependency): keep the numbers
        print(f"note: no profile.png ({e}); profile.json has every number")
    return result


def _record(cfg: Config, accelerator, run, num_classes: int, method: str, step, calibrated, flops, ms, note, args):
    """profile's result record: each phase's time and FLOPs, the step's, and how they were measured."""
    device, steps = accelerator.device, args["steps"]
    fused = isinstance(step.selector, GraphedUnixSelector)
    phases_used = PHASES_FUSED if fused else PHASES
    medians = {p: median(ms[p]) for p in phases_used}
    peak = peak_flops(device, cfg.mixed_precision)
    phases = _phase_rows(ms, medians, flops, phases_used, peak)
    step_ms = [sum(ms[p][i] for p in phases_used) for i in range(steps)]
    flop_total = sum(flops.values())
    result = {
        "kind": "unixkd profile",
        "environment": environment(device),
        "note": note,
        "selector": method,
        "args": args,
        "fast_path": {
            "requested": args["fast_path"],
            "modes": step_modes(step),
            "selection_phases": "fused" if fused else "split",
        },
        "teacher": cfg.model.teacher,
        "student": cfg.model.student,
        "N": cfg.data.batch_size,
        "image_size": cfg.data.image_size,
        "mixed_precision": cfg.mixed_precision,
        "teacher_weights": teacher_weights(cfg),
        "flops_per_image": {"Ft": run.ledger.Ft, "Fs": run.ledger.Fs, "Bs": run.ledger.Bs},
        "timing": "perf_counter at every phase boundary, device synced at each; time_share = phase median / "
        "sum of phase medians",
        "flop_counting": "one step of the eager twin under torch FlopCounterMode (grouped-conv backward fixed); "
        "convolutions and matrix products only, a multiply-add = 2",
        "median_step_ms": median(step_ms),
        "step_flops": flop_total,
        "peak": peak,
        "mfu": mfu(flop_total, median(step_ms), peak),
        "phases": phases,
        "config": to_dict(cfg),
        "wallclock": predicted_wall(
            cfg, accelerator, run, num_classes, method, step.selector, calibrated[method].model if calibrated else None
        ),
    }
    return result


def _check_options(method: str, fast_path: str, data: str, steps: int, warmup: int) -> None:
    """profile's own options, checked before anything is built."""
    from unixkd.selection import SELECTORS

    if method not in SELECTORS:
        raise ConfigError(f"--selector {method}: not one of {', '.join(SELECTORS)}")
    if fast_path not in FAST_PATHS:
        raise ConfigError(f"--fast-path {fast_path}: must be one of {', '.join(FAST_PATHS)}")
    if data not in ("pipeline", "synthetic"):
        raise ConfigError(f"--data {data}: profile takes pipeline or synthetic")
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")


def _count_flops(step, run, batches, fused: bool) -> dict:
    """FLOPs per phase: one counted step on the eager twin (same models, options and generator): a capture under
    the counter would add its warm-up calls, and replays are invisible to it."""
    counted = eager_step(step)
    counter = flop_counter()
    marks = ForwardMarks(_scoring_models(counted, run), lambda: float(counter.get_total_flops()))
    with counter:
        flops = walk_step(counted, batches, marks.read, marks)
    marks.remove()
    if fused:
        flops = fold_fused(flops)
    return flops


def _time_phases(step, run, batches, device, fused: bool, phases_used, warmup: int, steps: int) -> dict:
    """Milliseconds per phase of each timed step: warm-up (captures happen here), then the timed steps. No hooks
    on a graphed selection: they would not fire on a replay, and the clock's device sync inside a capture would
    break it."""
    clock = Clock(device)
    marks = ForwardMarks([] if fused else _scoring_models(step, run), clock.now)
    ms: dict[str, list[float]] = {p: [] for p in phases_used}
    for i in range(warmup + steps):
        seconds = walk_step(step, batches, clock.now, marks)
        if fused:
            seconds = fold_fused(seconds)
        if i >= warmup:
            for p in phases_used:
                ms[p].append(seconds[p] * 1e3)
    marks.remove()
    return ms


def _phase_rows(ms: dict, medians: dict, flops: dict, phases_used, peak) -> dict:
    """Each phase's median time, FLOPs, their shares of the step, achieved TFLOP/s and MFU."""
    time_total, flop_total = sum(medians.values()), sum(flops.values())
    phases = {}
    for p in phases_used:
        f = flops[p]
        phases[p] = {
            "median_ms": medians[p],
            "time_share": medians[p] / time_total if time_total > 0 else None,
            "flops": f,
            "flop_share": f / flop_total if flop_total > 0 else None,
            "achieved_tflops": f / (medians[p] / 1e3) / 1e12 if f > 0 and medians[p] > 0 else None,
            "mfu": mfu(f, medians[p], peak),
            "ms": ms[p],
        }
    return phases


def predicted_wall(cfg: Config, accelerator, run, num_classes: int, method: str, selector, model=None) -> dict | None:
    """The wall-clock model (training/wallclock.py) of `method` on this run (`model`, or measured now), at the
    profiled k: the predicted wall fraction of KD beside the FLOP fraction. None for methods that keep no k
    (KD: 1 by definition)."""
    from unixkd.selection import SELECTORS, resolve_k

    from ..config import BUDGET_METHODS

    if method not in BUDGET_METHODS:
        return None
    s, N, ledger = cfg.selection, cfg.data.batch_size, run.ledger
    if model is None:
        model = wallclock.measure(
            run, cfg, accelerator, num_classes, [method], steps=s.calibration_steps, warmup=s.calibration_warmup
        )[method]
    k = resolve_k(selector.k, N)
    flops = cost_fraction(k, N=N, Ft=ledger.Ft, Fs=ledger.Fs, Bs=ledger.Fs, scores_batch=SELECTORS[method].scores_batch)
    return {
        "k": k,
        "predicted_fraction": model.fraction(k),
        "flop_fraction": flops,
        "line": wallclock.predicted_line(model, k, flops),
        "model": model.to_dict(),
    }


def _scoring_models(step, run) -> list:
    """The models a selection may call (the student's scoring forward; the teacher for pick), for the hooks."""
    return [step.scorer] + ([run.teacher] if run.teacher is not None else [])


def plot(result: dict, path: Path) -> None:
    """Side-by-side bars per phase: share of step time vs share of step FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = result["phases"]
    names = list(phases)
    time_pct = [100 * (phases[p]["time_share"] or 0) for p in names]
    flop_pct = [100 * (phases[p]["flop_share"] or 0) for p in names]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    bars_t = ax.bar([i - 0.2 for i in x], time_pct, width=0.4, label="share of step time", color="#d62728")
    bars_f = ax.bar([i + 0.2 for i in x], flop_pct, width=0.4, label="share of step FLOPs", color="#1f77b4")
    for bars in (bars_t, bars_f):
        for b in bars:
            ax.annotate(
                f"{b.get_height():.1f}",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks(list(x), [LABELS.get(p, p) for p in names])
    ax.set_ylabel("% of one training step")
    env = result["environment"]
    precision = "fp32" if result["mixed_precision"] == "no" else result["mixed_precision"]
    modes = result["fast_path"]["modes"]
    ax.set_title(
        f"{result['teacher']} -> {result['student']}, {result['selector']} (selection {modes['selection']}, "
        f"teacher {modes['teacher']}), N={result['N']}, {result['image_size']} px, {precision}; "
        f"step {result['median_step_ms']:.1f} ms (median)\n{env['device']}",
        fontsize=9,
    )
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def format_table(result: dict) -> str:
    head = f"{'phase':<17} {'median ms':>9} {'time %':>7} {'GFLOPs':>9} {'FLOP %':>7} {'TFLOP/s':>8} {'MFU':>6}"
    lines = [head, "-" * len(head)]
    for p, v in result["phases"].items():
        tf = "-" if v["achieved_tflops"] is None else f"{v['achieved_tflops']:.4f}"
        util = "-" if v["mfu"] is None else f"{v['mfu']:.1%}"
        lines.append(
            f"{LABELS.get(p, p):<17} {v['median_ms']:9.2f} {100 * (v['time_share'] or 0):7.1f} "
            f"{v['flops'] / 1e9:9.3f} {100 * (v['flop_share'] or 0):7.1f} {tf:>8} {util:>6}"
        )
    modes = result["fast_path"]["modes"]
    lines.append(
        f"step (median of per-step sums) {result['median_step_ms']:.2f} ms, "
        f"{result['step_flops'] / 1e9:.3f} GFLOPs; selection {modes['selection']}, "
        f"teacher {modes['teacher']}, student {modes['student']}; {result['environment']['device']}; "
        f"MFU peak: {result['peak']['basis']}"
    )
    if result.get("wallclock"):
        lines.append(result["wallclock"]["line"])
    return "\n".join(lines)
