"""`compare`: the same student distilled by several methods (and seeds), one table, the cost picture.

Each method × seed is one training run in its own folder: `<out_dir>/<method>` with one seed (no --seeds),
`<out_dir>/<method>-seed<s>` with --seeds. The teacher is trained first if missing (once, for every run).

**Resumable.** Every run goes through `train` with `resume=auto`, and a finished one leaves
`compare_run.json` (its result row and the teacher's weights digest) beside its files. Run again, compare
reuses a run that is finished (status.json), was made from the same config (its config.yaml, the keys that
only say how to resume or watch a run aside) and the same teacher weights; continues an interrupted one from
its checkpoint; and refuses, in one line naming the folder and what differs, a folder that holds a run of
another config (never reused, never overwritten; `overwrite=true` moves it aside and trains again).

**Aggregates.** Per method over its seeds: mean ± sample std of top-1 (and top-5), the cost fraction in both
conventions, the run's wall-clock, the time in training steps (`train_s`: evaluations and checkpoint saves
left out), and the measured wall fraction = train_s / KD's train_s at the same seed (when kd is compared).
`compare.json` keeps every run's row and the aggregates; `compare_cost.png` is the UNIX paper's Fig. 1:
top-1 against the FLOP fraction and against the wall-clock fraction, one point per method, error bars over
seeds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from pathlib import Path

from . import run_dir
from .config import Config, validate
from .errors import UserError
from .files import atomic_write_json, save_figure

RUN_RECORD = "compare_run.json"
RESULT = "compare.json"
FIGURE = "compare_cost.png"


def run_folder(cfg: Config, method: str, seed: int, seeded: bool) -> Path:
    return Path(cfg.out_dir) / (f"{method}-seed{seed}" if seeded else method)


def teacher_digest(cfg: Config) -> str | None:
    """SHA-256 of the teacher checkpoint file (None without one: a pretrained or no teacher)."""
    path = Path(cfg.model.teacher_checkpoint) if cfg.model.teacher_checkpoint else None
    if path is None or not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finished_run(c: Config, teacher: str | None) -> dict | None:
    """The result row of a finished run of exactly this job in c.out_dir, or None if there is none to reuse.

    Raises a UserError if the folder holds a run of another config (unless overwrite=true)."""
    out = Path(c.out_dir)
    if c.overwrite or not (out / run_dir.CONFIG).is_file():
        return None
    differs = run_dir._config_differences(out / run_dir.CONFIG, c)
    if differs:
        raise UserError(
            f"compare: {out} holds a run of another config ({differs}); use another out_dir, or overwrite=true "
            "to move it aside and train again"
        )
    record = out / RUN_RECORD
    try:
        state = json.loads((out / run_dir.STATUS).read_text()).get("state")
        saved = json.loads(record.read_text()) if record.is_file() else None
    except (OSError, ValueError):
        return None
    if state != "finished" or saved is None:
        return None  # interrupted: train(resume=auto) continues it
    if saved.get("teacher_sha256") != teacher:
        raise UserError(
            f"compare: {out} was distilled from other teacher weights than {c.model.teacher_checkpoint} "
            "(its SHA-256 differs); use another out_dir, or overwrite=true to move it aside and train again"
        )
    return saved["row"]


def run_compare(cfg: Config, methods: list[str], seeds: list[int] | None = None, log=print) -> dict:
    """Train (or reuse) every method × seed; returns the compare record (also written to compare.json)."""
    from .recipes import ensure_teacher
    from .trainer import train

    seeded = seeds is not None
    seeds = seeds if seeded else [cfg.seed]
    teacher_run = ensure_teacher(cfg)
    teacher = teacher_digest(cfg)
    runs, stopped = [], None
    for seed in seeds:
        for method in methods:
            c = copy.deepcopy(cfg)
            c.selection.method, c.seed = method, seed
            c.out_dir = str(run_folder(cfg, method, seed, seeded))
            c.resume = "auto"  # an interrupted compare continues its runs from their checkpoints
            validate(c)
            row = finished_run(c, teacher)
            if row is not None:
                log(f"compare: {method} seed {seed}: finished earlier in {c.out_dir} (same config): reused")
                runs.append({**row, "reused": True})
                continue
            t0 = time.perf_counter()
            summary = train(c)
            row = {"method": method, "seed": seed, "out_dir": c.out_dir, "wall_s": time.perf_counter() - t0}
            row.update(summary)
            if summary.get("preempted"):
                stopped = row
                break
            atomic_write_json(Path(c.out_dir) / RUN_RECORD, {"row": row, "teacher_sha256": teacher}, indent=1)
            runs.append(row)
        if stopped:
            break
    if teacher_run is not None:
        for row in runs:
            row["teacher_train_top1"] = teacher_run["top1"]
    result = {
        "kind": "unixkd compare",
        "methods": methods,
        "seeds": seeds,
        "complete": stopped is None,
        "runs": runs,
        "summary": summarize(runs, methods),
        "teacher_top1": next((r["teacher_top1"] for r in runs if r.get("teacher_top1") is not None), None),
    }
    if stopped is not None:
        result["stopped"] = {k: stopped.get(k) for k in ("method", "seed", "out_dir", "step", "signal", "checkpoint")}
    return result


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(runs: list[dict], methods: list[str]) -> list[dict]:
    """Per method: n, mean and sample std over seeds of top-1/top-5, cost (both conventions), wall-clock,
    train_s, and the wall fraction against KD's run of the same seed (None without kd)."""
    kd_train = {r["seed"]: r.get("train_s") for r in runs if r["method"] == "kd"}
    out = []
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        row = {"method": method, "n": len(rs), "seeds": [r["seed"] for r in rs]}
        for key in ("top1", "top5", "cost_fraction", "cost_fraction_measured", "wall_s", "train_s", "k"):
            row[key], row[f"{key}_std"] = _mean_std([r.get(key) for r in rs])
        fractions = [
            r["train_s"] / kd_train[r["seed"]]
            for r in rs
            if r.get("train_s") and kd_train.get(r["seed"])  # same seed: the same data order, the same machine
        ]
        row["wall_fraction"], row["wall_fraction_std"] = _mean_std(fractions)
        row["teacher_images_per_step"] = rs[0]["teacher_images"] / rs[0]["step"] if rs[0].get("step") else None
        out.append(row)
    return out


def _pm(mean, std, fmt: str) -> str:
    if mean is None:
        return "-"
    return format(mean, fmt) + ("" if std is None else " ± " + format(std, fmt))


def format_seeds_table(result: dict) -> str:
    """One row per method: mean ± std over its seeds."""
    head = (
        f"{'method':<13} {'runs':>4} {'top1':>14} {'top5':>7} {'cost':>6} {'cost':>6} {'wall s':>13} "
        f"{'train s':>8} {'wall/KD':>15}"
    )
    sub = f"{'':<13} {'':>4} {'':>14} {'':>7} {'paper':>6} {'meas.':>6} {'':>13} {'':>8} {'(train s)':>15}"
    lines = [head, sub, "-" * len(head)]
    for r in result["summary"]:
        lines.append(
            f"{r['method']:<13} {r['n']:>4} {_pm(r['top1'], r['top1_std'], '.2f'):>14} {_pm(r['top5'], None, '.2f'):>7} "
            f"{_pm(r['cost_fraction'], None, '.3f'):>6} {_pm(r['cost_fraction_measured'], None, '.3f'):>6} "
            f"{_pm(r['wall_s'], r['wall_s_std'], '.1f'):>13} {_pm(r['train_s'], None, '.1f'):>8} "
            f"{_pm(r['wall_fraction'], r['wall_fraction_std'], '.3f'):>15}"
        )
    seeds = ", ".join(str(s) for s in result["seeds"])
    t = result.get("teacher_top1")
    lines.append(
        f"seeds {seeds}: mean ± sample std over seeds; cost = FLOPs / conventional KD's on the same steps; "
        f"wall/KD = time in training steps / KD's at the same seed"
        + (f"; teacher top1 {t:.2f}" if t is not None else "")
    )
    return "\n".join(lines)


def format_runs_table(result: dict) -> str:
    """One seed (no --seeds): one row per run, as compare always printed."""
    from .recipes import format_table

    return format_table(result["runs"])


def draw_figure(result: dict, path: str | Path) -> Path:
    """The UNIX paper's Fig. 1: top-1 against the FLOP fraction and against the wall-clock fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    panels = [
        ("cost_fraction", "FLOP fraction of conventional KD (paper convention, B_s = F_s)"),
        ("wall_fraction", "wall-clock fraction of KD (time in training steps, same seed)"),
    ]
    for ax, (key, label) in zip(axes, panels):
        shown = 0
        for r in summary:
            if r.get(key) is None or r.get("top1") is None:
                continue
            ax.errorbar(
                r[key],
                r["top1"],
                xerr=r.get(f"{key}_std") or 0,
                yerr=r.get("top1_std") or 0,
                fmt="o",
                capsize=4,
            )
            ax.annotate(r["method"], (r[key], r["top1"]), xytext=(6, 4), textcoords="offset points", fontsize=9)
            shown += 1
        if not shown:
            ax.text(0.5, 0.5, "no KD run to compare against", ha="center", va="center", transform=ax.transAxes)
        ax.axvline(1.0, color="gray", linestyle=":", linewidth=1)
        teacher = result.get("teacher_top1")
        if teacher is not None:
            ax.axhline(teacher, color="gray", linestyle="--", linewidth=1, label=f"teacher {teacher:.1f}")
        ax.set_xlabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("student val top-1, % (mean ± std over seeds)")
    seeds = result["seeds"]
    fig.suptitle(
        f"top-1 against cost, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); error bars: sample std",
        fontsize=10,
    )
    if result.get("teacher_top1") is not None:
        axes[0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_result(result: dict, out_dir: str | Path) -> list[Path]:
    """compare.json and compare_cost.png in out_dir (each written whole or not at all)."""
    import os

    import torch

    from .measure.timing import environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / RESULT]
    # the record every result file carries (machine, versions, commit), and how loaded the machine was: the wall
    # columns are only as good as the machine was quiet
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {**result, "environment": environment(device), "load_average_at_end": list(os.getloadavg())}
    atomic_write_json(out / RESULT, result, indent=1)
    try:
        written.append(draw_figure(result, out / FIGURE))
    except ImportError as e:  # no matplotlib: the numbers are in compare.json
        print(f"note: no {FIGURE} ({e})")
    return written


def draw_from_folder(out_dir: str | Path) -> list[Path]:
    """`report <compare out_dir>`: the figure again from compare.json."""
    path = Path(out_dir) / RESULT
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if not isinstance(result, dict) or "summary" not in result:
        raise UserError(f"{path}: not a compare result of this version (no summary); run compare again")
    return [draw_figure(result, Path(out_dir) / FIGURE)]
