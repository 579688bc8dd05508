"""End to end on the embedded digits set: train, metrics and cost ledger, eval, resume, teacher-if-missing, compare.

Small models (timm `test_resnet` teacher, torchvision ShuffleNetV2 x0.5 student) and a few steps each, on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

from unixkd import launch
from unixkd.training.config import load_config
from unixkd.training.cost import backward_flops
from unixkd.training.models import create_model
from unixkd.training.trainer import train

pytestmark = pytest.mark.slow

N, K = 32, 24


def small_config(tmp_path: Path, digits_root: Path, teacher_ckpt: Path, *extra: str):
    overrides = [
        f"out_dir={tmp_path / 'run'}",
        f"data.root={digits_root}",
        f"data.batch_size={N}",
        "data.val_batch_size=128",
        "model.teacher=test_resnet",
        "model.student=tv/shufflenet_v2_x0_5",
        f"model.teacher_checkpoint={teacher_ckpt}",
        "teacher_train.train_if_missing=false",
        f"selection.k={K}",
        "train.max_steps=4",
        "train.log_every=2",
        "train.progress=false",
        "optim.lr=0.05",
        *extra,
    ]
    return load_config(str(launch_config()), overrides)


def launch_config() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def read_rows(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def per_image_forward_flops(name: str, size: int = 32) -> int:
    """Independent of training.cost: count one eval-mode forward of a fresh model directly."""
    model = create_model(name, 10).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


@pytest.mark.parametrize("method", ["kd", "random", "unix"])
def test_train_writes_metrics_and_cost_fraction_matches_formula(tmp_path, digits_root, teacher_ckpt, method):
    cfg = small_config(tmp_path, digits_root, teacher_ckpt, f"selection.method={method}")
    summary = train(cfg)

    rows = read_rows(cfg.out_dir)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4]
    for key in (
        "step",
        "epoch",
        "loss",
        "lr",
        "img_per_s",
        "teacher_images",
        "student_fwd_images",
        "student_bwd_images",
        "cost_fraction",
        "cost_fraction_measured",
        "flops_paper",
        "flops_measured",
        "world_size",
    ):
        assert key in steps[-1], key
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    final = rows[-1]
    assert final["final"] and 0 <= final["top1"] <= final["top5"] <= 100 and final["val_images"] == 359
    assert "teacher_top1" in final

    Ft, Fs = per_image_forward_flops("test_resnet"), per_image_forward_flops("tv/shufflenet_v2_x0_5")
    expected = {"kd": 1.0, "random": K / N, "unix": K / N + Fs / (Ft + 2 * Fs)}[
        method
    ]  # docs/algorithms.md §1, B_s = F_s
    assert final["cost_fraction"] == pytest.approx(expected, rel=1e-9)
    k = N if method == "kd" else K
    assert final["teacher_images"] == 4 * k
    assert final["student_bwd_images"] == 4 * k
    assert final["student_fwd_images"] == 4 * (k + (N if method == "unix" else 0))
    assert summary["top1"] == final["top1"]

    # the measured convention: B_s counted (training.cost.backward_flops, checked on single layers in test_cost)
    Bs = backward_flops(create_model("tv/shufflenet_v2_x0_5", 10), 32)
    unix_measured = K / N + Fs / (Ft + Fs + Bs)  # docs/algorithms.md §1 with the counted B_s
    assert final["cost_fraction_measured"] == pytest.approx(
        {"kd": 1.0, "random": K / N, "unix": unix_measured}[method], rel=1e-9
    )
    fwd = k + (N if method == "unix" else 0)
    for row, n_steps in [(steps[0], 2), (final, 4)]:  # cumulative
        assert row["flops_paper"] == pytest.approx(n_steps * (k * Ft + fwd * Fs + k * Fs), rel=1e-12)
        assert row["flops_measured"] == pytest.approx(n_steps * (k * Ft + fwd * Fs + k * Bs), rel=1e-12)

    out = Path(cfg.out_dir)
    assert (out / "config.yaml").is_file() and (out / "final" / "model.safetensors").is_file()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-4"]


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path, digits_root, teacher_ckpt):
    """The resumed run's final student must equal the uninterrupted run's bit for bit: the checkpoint carries
    models, optimizer, scheduler, selector RNG, torch RNG, and DALI's reader position and crop/flip RNG."""
    fixed = [
        "data.crop_scale=[0.08,1.0]",
        "data.hflip=true",
        "selection.method=unix",
        "optim.warmup_epochs=0.05",
    ]  # the lr changes during the first steps, so the scheduler state matters
    full = small_config(tmp_path / "a", digits_root, teacher_ckpt, *fixed, "train.max_steps=7")
    train(full)

    first = small_config(tmp_path / "b", digits_root, teacher_ckpt, *fixed, "train.max_steps=3")
    train(first)
    resumed = small_config(tmp_path / "b", digits_root, teacher_ckpt, *fixed, "train.max_steps=7", "resume=auto")
    train(resumed)

    a = load_file(str(Path(full.out_dir) / "final" / "model.safetensors"))
    b = load_file(str(Path(resumed.out_dir) / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert read_rows(full.out_dir)[-1]["cost_fraction"] == read_rows(resumed.out_dir)[-1]["cost_fraction"]
    assert read_rows(resumed.out_dir)[-1]["teacher_images"] == 7 * K


def test_resume_refuses_a_different_batch_size(tmp_path, digits_root, teacher_ckpt):
    train(small_config(tmp_path, digits_root, teacher_ckpt, "train.max_steps=1"))
    with pytest.raises(ValueError, match="resume"):
        train(
            small_config(
                tmp_path,
                digits_root,
                teacher_ckpt,
                "train.max_steps=2",
                "resume=auto",
                "data.batch_size=16",
                "selection.k=8",
            )
        )


def test_eval_command_reproduces_the_final_top1(tmp_path, digits_root, teacher_ckpt, capsys):
    cfg = small_config(tmp_path, digits_root, teacher_ckpt, "train.max_steps=2")
    summary = train(cfg)
    capsys.readouterr()
    for ckpt in (Path(cfg.out_dir) / "final" / "model.safetensors", Path(cfg.out_dir) / "final"):  # file or folder
        code = launch.main(
            [
                "eval",
                "--config",
                str(launch_config()),
                f"data.root={digits_root}",
                "model.student=tv/shufflenet_v2_x0_5",
                f"checkpoint={ckpt}",
            ]
        )
        assert code == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["top1"] == pytest.approx(summary["top1"]) and result["val_images"] == 359


def test_compare_trains_missing_teacher_then_prints_one_table(tmp_path, digits_root, capsys):
    teacher = tmp_path / "teacher" / "final" / "model.safetensors"
    code = launch.main(
        [
            "compare",
            "--config",
            str(launch_config()),
            "--methods",
            "kd,unix",
            f"out_dir={tmp_path / 'cmp'}",
            f"data.root={digits_root}",
            f"data.batch_size={N}",
            "model.teacher=test_resnet",
            f"model.teacher_checkpoint={teacher}",
            "teacher_train.epochs=1",
            f"selection.k={K}",
            "train.max_steps=3",
            "train.progress=false",
        ]
    )
    assert code == 0
    assert teacher.is_file()  # the teacher was trained first, by the same trainer with plain CE
    teacher_rows = read_rows(teacher.parent.parent)
    assert teacher_rows[-1]["final"] and teacher_rows[-1]["cost_fraction"] == 1.0
    out = capsys.readouterr().out
    table = out[out.index("method") :]
    assert "kd " in table and "unix " in table and "teacher top1" in table
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    assert [r["method"] for r in rows] == ["kd", "unix"]
    assert rows[0]["cost_fraction"] == 1.0 and rows[1]["cost_fraction"] < 1.0
    assert rows[0]["teacher_top1"] == rows[1]["teacher_top1"] == pytest.approx(teacher_rows[-1]["top1"])


# ---------------------------------------------------------------------------------------------------------
# every other method of both papers, a few steps each, through the same trainer


def cost_formula(method, Ft, Fs, k=K, n_pick=N):
    """docs/algorithms.md §1 and §3 with B_s = F_s: images through teacher, student forward and backward, per KD image."""
    teacher, fwd, bwd = {
        "uncertainty": (k, N + k, k),
        "nonadaptive": (k, N + k, k),
        "mixup": (k, k, k),
        "tlmixup": (2 * N, 2 * N, 2 * N),
        "tlcutmix": (2 * N, 2 * N, 2 * N),
        "tlcutmix_pick": (N + 2 * N, 2 * N + N + n_pick, N + n_pick),  # pool 2N scored by both models
    }[method]
    return (teacher * Ft + (fwd + bwd) * Fs) / (N * (Ft + 2 * Fs))


@pytest.mark.parametrize(
    "method,extra",
    [
        ("uncertainty", ["selection.criterion=margin"]),
        ("mixup", ["selection.budget=0.5"]),  # the budget mode picks k = 16 of 32 (no scoring pass)
        ("nonadaptive", ["loss.feature=at"]),  # with AT on the last three stages of both models
        ("tlmixup", ["loss.feature=sp"]),
        ("tlcutmix", []),
        ("tlcutmix_pick", ["train.count_images=true"]),
    ],
)
def test_every_method_trains_and_its_cost_is_what_it_ran(tmp_path, digits_root, teacher_ckpt, method, extra, capsys):
    steps = 2
    cfg = small_config(
        tmp_path, digits_root, teacher_ckpt, f"selection.method={method}", f"train.max_steps={steps}", *extra
    )
    summary = train(cfg)
    assert torch.isfinite(torch.tensor([r["loss"] for r in read_rows(cfg.out_dir) if "loss" in r])).all()
    Ft, Fs = per_image_forward_flops("test_resnet"), per_image_forward_flops("tv/shufflenet_v2_x0_5")
    k = 16 if method == "mixup" else K
    assert summary["cost_fraction"] == pytest.approx(cost_formula(method, Ft, Fs, k=k), rel=1e-9)
    if method == "mixup":
        assert "budget 0.5 of KD (paper convention" in capsys.readouterr().out
        assert summary["teacher_images"] == steps * 16

    sampling = json.loads((Path(cfg.out_dir) / "sampling.json").read_text())
    assert sampling["epochs"] == [0] and sum(sampling["seen"][0]) == steps * N
    main_rows = N if method.startswith("tl") else k
    assert sum(sampling["selected"][0]) == steps * main_rows
    assert sum(sampling["extra"][0]) == (steps * N if method.startswith("tl") else 0)
    last = sampling["eval"][-1]
    assert sum(last["per_class_total"]) == 359
    assert 100 * sum(last["per_class_correct"]) / 359 == pytest.approx(summary["top1"])
    assert "per_class_correct" not in summary  # the per-class counts live in sampling.json, not in metrics

    if method == "tlcutmix_pick":  # per-image counts, and the report drawn from this run
        images = np.load(Path(cfg.out_dir) / "sampling_images" / "epoch-0000.npy")
        assert images.sum() == steps * (N + N) and images.shape == (1438,)
        assert launch.main(["report", cfg.out_dir]) == 0
        for name in ("sampling_heatmap.png", "selected_vs_accuracy.png", "curves.png"):
            assert (Path(cfg.out_dir) / "report" / name).stat().st_size > 5000


def test_budget_below_the_scoring_pass_is_refused_before_training(tmp_path, digits_root, teacher_ckpt, capsys):
    code = launch.main(
        [
            "train",
            "--config",
            str(launch_config()),
            f"out_dir={tmp_path / 'b'}",
            f"data.root={digits_root}",
            f"data.batch_size={N}",
            "model.teacher=test_resnet",
            f"model.teacher_checkpoint={teacher_ckpt}",
            "teacher_train.train_if_missing=false",
            "selection.method=unix",
            "selection.budget=0.01",
            "train.progress=false",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scoring pass alone costs" in err[0]
    assert not (tmp_path / "b" / "checkpoints").exists()
