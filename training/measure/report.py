"""`launch.py report <out_dir>`: the figures of one run, from its metrics.jsonl and sampling.json, as PNGs.

sampling_heatmap.png      class × epoch: share of each class's images among the rows trained on
                          (the UNIX paper's Fig. 6); a second panel for the extra view of TL methods
selected_vs_accuracy.png  per class: times selected over the run vs final top-1 (the paper's Fig. 5)
curves.png                training loss, val top-1 and the cumulative cost fraction against the step

On a compare's folder (compare.json, no metrics.jsonl): compare_cost.png, top-1 against the FLOP and the
wall-clock fraction (training/compare.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from ..analytics import load_sampling
from ..errors import UserError
from ..files import save_figure

REPORT_DIR = "report"


def read_metrics(out_dir: Path) -> list[dict]:
    """The rows of `<out_dir>/metrics.jsonl`. A partial last line (the run was killed while writing it) is left
    out with a note; a damaged line elsewhere is a one-line error naming the file and the line."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{out_dir}: no metrics.jsonl (not a training run folder?)")
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines):
                print(f"note: {path} line {number} is incomplete (a run killed while writing it); left out")
                continue
            raise UserError(f"{path} line {number} is not valid JSON: {line[:60]!r}") from None
        if not isinstance(row, dict):
            raise UserError(f"{path} line {number} is not a JSON object: {line[:60]!r}")
        rows.append(row)
    return rows


def run_method(out_dir: Path) -> str:
    path = out_dir / "config.yaml"
    if not path.is_file():
        return "?"
    cfg = yaml.safe_load(path.read_text()) or {}
    return str(cfg.get("selection", {}).get("method", "?"))


def draw_report(out_dir: str | Path) -> list[Path]:
    """Write the PNGs into `<out_dir>/report/`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: no such run folder")
    if (out_dir / "compare.json").is_file() and not (out_dir / "metrics.jsonl").is_file():
        from ..compare import draw_from_folder

        return draw_from_folder(out_dir)  # a compare's folder: its cost figure (the UNIX paper's Fig. 1)
    rows = read_metrics(out_dir)
    sampling = load_sampling(out_dir)
    method = run_method(out_dir)
    folder = out_dir / REPORT_DIR
    folder.mkdir(exist_ok=True)
    return [
        heatmap(sampling, method, folder / "sampling_heatmap.png"),
        selected_vs_accuracy(sampling, method, folder / "selected_vs_accuracy.png"),
        curves(rows, method, folder / "curves.png"),
    ]


def _share(counts: list[list[int]], seen: list[list[int]]) -> np.ndarray:
    """[C, E]: counts / images seen, per class and epoch (0 where a class had no image that epoch)."""
    c, s = np.asarray(counts, dtype=float).T, np.asarray(seen, dtype=float).T
    return np.divide(c, s, out=np.zeros_like(c), where=s > 0)


def _has_extra(sampling: dict) -> bool:
    return any(any(row) for row in sampling["extra"])


def heatmap(sampling: dict, method: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    classes, epochs = sampling["classes"], sampling["epochs"]
    panels = [("main rows (KD on the selected images)", _share(sampling["selected"], sampling["seen"]))]
    if _has_extra(sampling):
        panels.append(("extra view (TL: teacher-labelled mixed rows)", _share(sampling["extra"], sampling["seen"])))
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(4 + 3 * len(panels) + 0.15 * len(epochs), 2 + 0.25 * min(len(classes), 60)),
        squeeze=False,
    )
    for ax, (title, share) in zip(axes[0], panels):
        im = ax.imshow(
            share,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            extent=(min(epochs) - 0.5, max(epochs) + 0.5, len(classes) - 0.5, -0.5),
        )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("class")
        if len(classes) <= 60:
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label="rows per image of the class")
    fig.suptitle(f"{method}: how often each class is trained on, per epoch", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def selected_vs_accuracy(sampling: dict, method: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    if not sampling["eval"]:
        raise UserError("sampling.json has no evaluation with per-class accuracy yet (the run has not finished)")
    last = sampling["eval"][-1]
    correct, total = np.asarray(last["per_class_correct"], float), np.asarray(last["per_class_total"], float)
    accuracy = 100 * np.divide(correct, total, out=np.zeros_like(correct), where=total > 0)
    extra = _has_extra(sampling)
    times = np.asarray(sampling["extra" if extra else "selected"], float).sum(0)
    what = "times in the extra view (picked / mixed)" if extra else "times selected"

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(times, accuracy, s=18)
    if len(times) <= 30:
        for name, x, y in zip(sampling["classes"], times, accuracy):
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 2), textcoords="offset points")
    r = np.corrcoef(times, accuracy)[0, 1] if times.std() > 0 and accuracy.std() > 0 else float("nan")
    ax.set_xlabel(f"{what}, summed over {len(sampling['epochs'])} epoch(s)")
    ax.set_ylabel(f"val top-1 of the class, % (step {last['step']})")
    ax.set_title(f"{method}: {what}\nvs per-class val top-1 (Pearson r = {r:.2f})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def curves(rows: list[dict], method: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "top1" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], marker=".")
    axes[0].set_title("training loss (mean over the logging interval)", fontsize=9)
    axes[1].plot([r["step"] for r in evals], [r["top1"] for r in evals], marker="o")
    teacher = next((r["teacher_top1"] for r in reversed(rows) if "teacher_top1" in r), None)
    if teacher is not None:
        axes[1].axhline(teacher, color="gray", linestyle="--", label=f"teacher {teacher:.1f}")
        axes[1].legend(fontsize=8)
    axes[1].set_title("val top-1, %", fontsize=9)
    axes[2].plot([r["step"] for r in train], [r["cost_fraction"] for r in train], marker=".")
    axes[2].axhline(1.0, color="gray", linestyle="--", label="conventional KD")
    axes[2].legend(fontsize=8)
    axes[2].set_title("cost so far, share of KD's FLOPs (B_s = F_s)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(method, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path
