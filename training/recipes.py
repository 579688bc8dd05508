"""Jobs made of training runs: train a missing teacher first; compare's one-seed table (training/compare.py runs it)."""

from __future__ import annotations

import copy
from pathlib import Path

from .config import Config, ConfigError, validate
from .trainer import train

TEACHER_FILE = Path("final") / "model.safetensors"


def ensure_teacher(cfg: Config) -> dict | None:
    """If the teacher checkpoint is missing and `teacher_train.train_if_missing`, train it with plain CE.

    The teacher's run lives in the folder that holds `final/model.safetensors`, so the file the distillation
    run loads is exactly what this run writes. Returns the teacher run's summary, or None if nothing ran.
    """
    path = Path(cfg.model.teacher_checkpoint) if cfg.model.teacher_checkpoint else None
    if cfg.selection.method == "none" or not cfg.teacher_train.train_if_missing or (path and path.exists()):
        return None
    if path is None or path.parts[-2:] != TEACHER_FILE.parts:
        raise ConfigError(
            "config key 'model.teacher_checkpoint' must end in final/model.safetensors when "
            f"teacher_train.train_if_missing=true, got {cfg.model.teacher_checkpoint!r}"
        )
    t = copy.deepcopy(cfg)
    t.out_dir = str(path.parent.parent)
    t.resume = "auto"  # a teacher run killed half-way continues instead of starting over
    t.model.student = cfg.model.teacher
    t.model.teacher_checkpoint = ""
    t.selection.method = "none"
    t.loss.ce_weight, t.loss.kd_weight = 1.0, 0.0
    t.optim.lr = cfg.teacher_train.lr
    t.train.epochs = cfg.teacher_train.epochs
    t.train.max_steps = 0
    t.optim.milestones = [m for m in cfg.optim.milestones if m < t.train.epochs]
    validate(t)
    print(
        f"teacher checkpoint {path} not found: training teacher {cfg.model.teacher} "
        f"for {t.train.epochs} epochs into {t.out_dir}"
    )
    return train(t)


def format_table(rows: list[dict]) -> str:
    head = f"{'method':<13} {'top1':>6} {'top5':>6} {'teacher imgs':>12} {'student fwd':>11} {'cost':>6} {'wall s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<13} {r['top1']:6.2f} {r['top5']:6.2f} {r['teacher_images']:12d} "
            f"{r['student_fwd_images']:11d} {r['cost_fraction']:6.3f} {r['wall_s']:7.1f}"
        )
    t = rows[0].get("teacher_top1")
    if t is not None:
        lines.append(f"teacher top1 {t:.2f}   cost = FLOPs / conventional KD's on the same steps (B_s = F_s)")
    return "\n".join(lines)
