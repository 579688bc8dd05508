"""CIFAR-100 end to end on synthetic pickles: the shipped configs load, a pair trains a few steps through either
loader, a mid-epoch resume is bitwise, and the documented teacher command writes a usable teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

from synthetic_data import write_cifar
from unixkd import launch
from unixkd.training.config import load_config
from unixkd.training.models import create_model
from unixkd.training.trainer import train

REPO = Path(__file__).resolve().parent.parent
CIFAR_CONFIGS = sorted((REPO / "configs" / "cifar100").glob("*.yaml"))
TL_CONFIGS = sorted((REPO / "configs" / "cifar100" / "tlcutmix_pick").glob("*.yaml"))
TINY_CONFIGS = sorted((REPO / "configs" / "tinyimagenet").glob("*.yaml"))
LOW_LR_STUDENTS = {"cifar_mobilenetv2", "cifar_shufflev1", "cifar_shufflev2"}
N, K, TRAIN_IMAGES, TEST_IMAGES = 16, 12, 48, 20  # 3 steps per epoch


def check_recipe(cfg, *, epochs, milestones, batch, lr):
    assert timm.is_model(cfg.model.student)
    assert cfg.selection.method == "none" or timm.is_model(cfg.model.teacher)
    assert (cfg.train.epochs, cfg.optim.milestones, cfg.data.batch_size) == (epochs, milestones, batch)
    assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.loss.temperature) == (0.9, 5e-4, 4.0)
    assert cfg.optim.lr == lr
    # the authors' SGD (UNIXKD student_v0.py / teacher.py, Good-DA-in-KD train_student.py): every parameter
    # decayed, no nesterov, no warmup, x0.1 steps
    assert cfg.optim.decay_norm_and_bias is True
    assert (cfg.optim.nesterov, cfg.optim.warmup_epochs) == (False, 0.0)
    assert (cfg.optim.schedule, cfg.optim.gamma) == ("step", 0.1)


@pytest.mark.parametrize("path", CIFAR_CONFIGS, ids=lambda p: p.stem)
def test_cifar100_configs_follow_the_papers_recipe(path):
    cfg = load_config(str(path))
    low = cfg.model.student in LOW_LR_STUDENTS
    check_recipe(cfg, epochs=240, milestones=[150, 180, 210], batch=64, lr=0.01 if low else 0.05)
    if cfg.selection.method == "unix":
        assert (cfg.selection.k, cfg.selection.alpha, cfg.selection.w, cfg.loss.ce_weight) == (48, 1.0, 10.0, 0.0)
        assert cfg.model.teacher_checkpoint == f"runs/cifar100/teacher_{cfg.model.teacher}/final/model.safetensors"


@pytest.mark.parametrize("path", TL_CONFIGS, ids=lambda p: p.stem)
def test_tl_configs_follow_the_papers_recipe(path):
    cfg = load_config(str(path))
    low = cfg.model.student in LOW_LR_STUDENTS
    check_recipe(cfg, epochs=240, milestones=[150, 180, 210], batch=64, lr=0.01 if low else 0.05)
    assert cfg.selection.method == "tlcutmix_pick" and cfg.selection.alpha == 1.0


@pytest.mark.parametrize("path", TINY_CONFIGS, ids=lambda p: p.stem)
def test_tinyimagenet_configs_follow_the_recipe(path):
    cfg = load_config(str(path))
    check_recipe(cfg, epochs=100, milestones=[40, 70, 90], batch=256, lr=0.1)
    assert cfg.data.image_size == 64 and cfg.data.dataset == "tinyimagenet"
    if cfg.selection.method == "unix":
        assert (cfg.selection.k, cfg.selection.alpha) == (192, 0.2)


# --- training on synthetic CIFAR-100 pickles -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar100", n_train=TRAIN_IMAGES, n_test=TEST_IMAGES)
    return root


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("cifar_resnet8", 100).state_dict().items()}, str(path))
    return path


def pair_config(tmp_path, cifar_root, teacher, *extra):
    """The resnet56 -> resnet20 config, shrunk: resnet8 models, N = 32, a few steps."""
    return load_config(
        str(REPO / "configs" / "cifar100" / "resnet56_resnet20.yaml"),
        [
            f"out_dir={tmp_path / 'run'}",
            f"data.root={cifar_root}",
            f"data.batch_size={N}",
            f"selection.k={K}",
            "selection.b=8",
            f"data.val_batch_size={TEST_IMAGES}",
            "data.num_threads=1",
            "model.teacher=cifar_resnet8",
            "model.student=cifar_resnet8",
            f"model.teacher_checkpoint={teacher}",
            "train.max_steps=3",
            "train.log_every=1",
            "train.progress=false",
            *extra,
        ],
    )


def rows(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def flops(name: str) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        create_model(name, 100).eval()(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["dali", "tensor"])
def test_a_cifar_pair_trains_a_few_steps(tmp_path, cifar_root, tiny_teacher, loader):
    cfg = pair_config(tmp_path, cifar_root, tiny_teacher, f"data.cifar_loader={loader}")
    summary = train(cfg)
    steps = [r for r in rows(cfg.out_dir) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert summary["val_images"] == TEST_IMAGES and 0 <= summary["top1"] <= summary["top5"] <= 100
    assert summary["teacher_images"] == 3 * K and summary["student_fwd_images"] == 3 * (N + K)
    F = flops("cifar_resnet8")  # F_t = F_s here: UNIX costs k/N + 1/3 of KD (docs/algorithms.md §1)
    assert summary["Ft"] == summary["Fs"] == F
    assert summary["cost_fraction"] == pytest.approx(K / N + 1 / 3, rel=1e-9)


@pytest.mark.slow
def test_cifar_resume_mid_epoch_is_bitwise(tmp_path, cifar_root, tiny_teacher):
    """The crops and flips are planned per (seed, epoch, image), so a resumed run sees the same pixels: its
    weights equal the uninterrupted run's exactly, across an epoch boundary (3 steps per epoch here)."""
    full = pair_config(tmp_path / "a", cifar_root, tiny_teacher, "train.max_steps=5")
    train(full)
    first = pair_config(tmp_path / "b", cifar_root, tiny_teacher, "train.max_steps=2")
    train(first)
    train(pair_config(tmp_path / "b", cifar_root, tiny_teacher, "train.max_steps=5", "resume=auto"))
    a = load_file(str(Path(full.out_dir) / "final" / "model.safetensors"))
    b = load_file(str(Path(first.out_dir) / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_teacher_command_from_the_readme_writes_a_loadable_teacher(tmp_path, cifar_root, capsys):
    out = tmp_path / "teacher_cifar_resnet8"
    code = launch.main(
        [
            "train",
            "--config",
            str(REPO / "configs" / "cifar100" / "teacher.yaml"),
            f"data.root={cifar_root}",
            "model.student=cifar_resnet8",
            f"out_dir={out}",
            f"data.batch_size={N}",
            "data.num_threads=1",
            "train.max_steps=2",
            "train.progress=false",
        ]
    )
    assert code == 0
    final = rows(out)[-1]
    assert final["final"] and final["teacher_images"] == 0 and final["val_images"] == TEST_IMAGES
    teacher = create_model("cifar_resnet8", 100, checkpoint=str(out / "final" / "model.safetensors"))
    assert teacher.fc.out_features == 100
