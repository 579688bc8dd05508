"""A user's runs are never lost or misattributed: used out_dirs, two runs at once, refused resumes, damaged
checkpoints, a full disk, metrics after a resume (in-process on CPU; the multi-process cases are in
test_distributed.py)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train_e2e import read_rows, small_config
from unixkd import launch
from unixkd.training import checkpoint as ckpt
from unixkd.training import run_dir
from unixkd.training.config import ConfigError
from unixkd.training.files import atomic_path, atomic_write_text
from unixkd.training.guards import CheckpointWriteError
from unixkd.training.measure.report import read_metrics
from unixkd.training.trainer import train

pytestmark = pytest.mark.slow


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (path -> bytes), to prove a refused command changed nothing."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != run_dir.LOCK
    }


FIRST = ("train.max_steps=4", "train.checkpoint_every=2", "train.log_every=1", "train.eval_every=0")


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, digits_root, teacher_ckpt) -> Path:
    base = tmp_path_factory.mktemp("first")
    train(small_config(base, digits_root, teacher_ckpt, *FIRST))
    return base / "run"


@pytest.fixture()
def first_run(trained_once, tmp_path, digits_root, teacher_ckpt):
    """A finished 4-step run with checkpoints at steps 2 and 4, copied to tmp_path/run (trained once per module)."""
    import shutil

    shutil.copytree(trained_once, tmp_path / "run")
    return small_config(tmp_path, digits_root, teacher_ckpt, *FIRST)


# ---------------------------------------------------------------- a used out_dir


def test_a_new_run_in_a_used_out_dir_is_refused_and_changes_nothing(first_run, tmp_path, digits_root, teacher_ckpt):
    out = Path(first_run.out_dir)
    before = snapshot(out)
    again = small_config(tmp_path, digits_root, teacher_ckpt, "train.max_steps=2", "optim.lr=0.05")
    with pytest.raises(ValueError, match=r"holds another run .*resume=auto.*another out_dir.*overwrite=true") as e:
        train(again)
    assert "\n" not in str(e.value)
    assert snapshot(out) == before  # config.yaml, metrics, checkpoints, final/: all as the first run left them


def test_overwrite_moves_the_old_run_aside_and_resume_then_continues_the_new_one(
    first_run, tmp_path, digits_root, teacher_ckpt, capsys
):
    out = Path(first_run.out_dir)
    before = snapshot(out)
    new = small_config(
        tmp_path,
        digits_root,
        teacher_ckpt,
        "train.max_steps=2",
        "train.checkpoint_every=1",
        "optim.lr=0.02",
        "overwrite=true",
        "train.eval_every=0",
        "train.log_every=1",
    )
    train(new)
    moved = [p for p in out.parent.iterdir() if p.name.startswith(f"{out.name}.old-")]
    assert len(moved) == 1 and snapshot(moved[0]) == before  # the old run, whole, beside the new one
    assert "moved the previous run's files" in capsys.readouterr().out
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-1", "step-2"]  # nothing of the old run pruned
    assert [r["step"] for r in read_rows(out) if "loss" in r] == [1, 2]
    assert "lr: 0.02" in (out / "config.yaml").read_text()

    resumed = small_config(
        tmp_path,
        digits_root,
        teacher_ckpt,
        "train.max_steps=3",
        "train.checkpoint_every=1",
        "optim.lr=0.02",
        "resume=auto",
        "train.eval_every=0",
        "train.log_every=1",
    )
    summary = train(resumed)
    assert "resumed from" in capsys.readouterr().out and summary["step"] == 3  # the new run's step-2, not the old 4


def test_resume_auto_without_a_checkpoint_restarts_only_the_same_job(
    tmp_path, digits_root, teacher_ckpt, monkeypatch, capsys
):
    import unixkd.training.step as step_module

    real = step_module.DistillStep.__call__
    calls = {"n": 0}

    def dies_at_step_2(self, images, labels):  # a job killed in its first epoch, before any checkpoint
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("node lost")
        return real(self, images, labels)

    args = ("train.max_steps=3", "train.log_every=1", "train.eval_every=0", "resume=auto")
    monkeypatch.setattr(step_module.DistillStep, "__call__", dies_at_step_2)
    with pytest.raises(RuntimeError, match="node lost"):
        train(small_config(tmp_path, digits_root, teacher_ckpt, *args))
    monkeypatch.undo()
    out = tmp_path / "run"
    assert run_dir.read_status(out)["state"] == "failed" and [r["step"] for r in read_rows(out)] == [1]

    with pytest.raises(ValueError, match=r"without a complete checkpoint whose config differs \(optim.lr: 0.05 -> 0.2"):
        train(small_config(tmp_path, digits_root, teacher_ckpt, *args, "optim.lr=0.2"))  # another job
    train(small_config(tmp_path, digits_root, teacher_ckpt, *args))  # the requeued job itself
    assert "starting it over" in capsys.readouterr().out
    assert [r["step"] for r in read_rows(out) if "loss" in r] == [1, 2, 3]  # the dead attempt's row is gone


# ---------------------------------------------------------------- one run per out_dir at a time

HOLD = """
import sys, time
from pathlib import Path
from unixkd.training.run_dir import OutDirLock
lock = OutDirLock(Path(sys.argv[1])); lock.acquire(); print("held", flush=True); time.sleep(600)
"""


def test_a_second_run_on_a_locked_out_dir_is_refused_naming_the_holder_and_a_kill_frees_it(
    tmp_path, digits_root, teacher_ckpt
):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = small_config(tmp_path, digits_root, teacher_ckpt, "train.max_steps=1")
        with pytest.raises(ValueError, match=rf"out_dir={out} is in use by another run \(pid {holder.pid} on "):
            train(cfg)
        assert sorted(p.name for p in out.iterdir()) == [run_dir.LOCK]  # nothing written
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, yet the OS frees the lock
        holder.wait()
    assert train(cfg)["step"] == 1


def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path, digits_root, teacher_ckpt, monkeypatch):
    seen = []
    real = ckpt.save_checkpoint

    def probing(*args, **kwargs):
        seen.append(run_dir.lock_is_free(tmp_path / "run"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", probing)
    train(small_config(tmp_path, digits_root, teacher_ckpt, "train.max_steps=2", "train.checkpoint_every=1"))
    assert seen == [False, False] and run_dir.lock_is_free(tmp_path / "run")


# ---------------------------------------------------------------- refused resumes leave the folder as it was


@pytest.mark.parametrize(
    "change, message",
    [
        ("seed=1", r"saved with seed=0 \(this run: 1\)"),
        ("optim.lr=0.2", r"saved with optim.lr=0.05 \(this run: 0.2\)"),
        (
            "model.student=tv/mobilenet_v3_small",
            r"student='tv/shufflenet_v2_x0_5' \(this run: 'tv/mobilenet_v3_small'\)",
        ),
    ],
)
def test_a_refused_resume_keeps_config_yaml_and_says_why_in_one_line(
    first_run, tmp_path, digits_root, teacher_ckpt, change, message
):
    out = Path(first_run.out_dir)
    before = snapshot(out)
    with pytest.raises(ValueError, match=message) as e:
        train(small_config(tmp_path, digits_root, teacher_ckpt, "train.max_steps=6", "resume=auto", change))
    assert "\n" not in str(e.value) and "resume_force=true" in str(e.value)
    assert snapshot(out) == before


def test_resuming_another_model_names_the_mismatching_tensors(first_run, tmp_path, digits_root, teacher_ckpt):
    cfg = small_config(
        tmp_path,
        digits_root,
        teacher_ckpt,
        "train.max_steps=6",
        "resume=auto",
        "resume_force=true",
        "model.student=tv/mobilenet_v3_small",
    )
    with pytest.raises(
        ValueError,
        match=r"holds another student than model.student=tv/mobilenet_v3_small: .*"
        r"(missing|unexpected) keys \(e\.g\. ",
    ) as e:
        train(cfg)
    assert "\n" not in str(e.value)


def test_a_dataset_that_changed_between_runs_is_not_resumed_silently(tmp_path, digits_root, teacher_ckpt):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits_root, data, ignore=shutil.ignore_patterns("MANIFEST.json"))
    args = ("data.dataset=folder", f"data.root={data}", "train.max_steps=2", "train.checkpoint_every=2")
    train(small_config(tmp_path, digits_root, teacher_ckpt, *args))
    next((data / "train" / "5").iterdir()).unlink()  # one image fewer: every later epoch's order changes
    with pytest.raises(ValueError, match=r"train_samples=1438 \(this run: 1437\)"):
        train(small_config(tmp_path, digits_root, teacher_ckpt, *args, "resume=auto", "train.max_steps=4"))


# ---------------------------------------------------------------- damaged checkpoints


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # same size, one byte changed: only the checksum sees it
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))


@pytest.mark.parametrize(
    "victim, how", [("model.safetensors", "truncate"), ("optimizer.bin", "flip"), ("trainer_state_0.json", "truncate")]
)
def test_resume_auto_passes_over_a_damaged_newest_checkpoint(
    first_run, tmp_path, digits_root, teacher_ckpt, capsys, victim, how
):
    out = Path(first_run.out_dir)
    damage(out / "checkpoints" / "step-4" / victim, how)
    capsys.readouterr()
    summary = train(
        small_config(
            tmp_path,
            digits_root,
            teacher_ckpt,
            "train.max_steps=5",
            "resume=auto",
            "train.checkpoint_every=2",
            "train.log_every=1",
            "train.eval_every=0",
        )
    )
    printed = capsys.readouterr().out
    assert f"step-4 is not usable: {victim}" in printed and "resuming from step-2" in printed
    assert summary["step"] == 5
    assert [r["step"] for r in read_rows(out) if "loss" in r] == [1, 2, 3, 4, 5]  # rows 3, 4 redone, not doubled


def test_resume_of_a_named_damaged_checkpoint_is_refused(first_run, tmp_path, digits_root, teacher_ckpt):
    step4 = Path(first_run.out_dir) / "checkpoints" / "step-4"
    damage(step4 / "model.safetensors", "flip")
    with pytest.raises(ValueError, match=r"cannot resume from this checkpoint: model.safetensors changed since"):
        train(small_config(tmp_path, digits_root, teacher_ckpt, "train.max_steps=6", f"resume={step4}"))


def test_every_checkpoint_carries_a_manifest_of_its_files(first_run):
    step4 = Path(first_run.out_dir) / "checkpoints" / "step-4"
    manifest = json.loads((step4 / "MANIFEST.json").read_text())["files"]
    on_disk = {str(p.relative_to(step4)) for p in step4.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}
    assert set(manifest) == on_disk and {"model.safetensors", "optimizer.bin", "trainer_state_0.json"} <= on_disk
    assert ckpt.checkpoint_problem(step4, world_size=1) is None
    assert ckpt.checkpoint_problem(step4, world_size=2) == "saved by 1 process(es), this run has 2"


# ---------------------------------------------------------------- a full disk mid-run


def test_a_checkpoint_that_cannot_be_written_ends_the_run_in_one_line_with_the_previous_intact(
    tmp_path, digits_root, teacher_ckpt, monkeypatch, capsys
):
    from accelerate import Accelerator

    real, calls = Accelerator.save_state, {"n": 0}

    def fills_the_disk(self, output_dir=None, **kwargs):
        calls["n"] += 1
        real(self, output_dir, **kwargs)
        if calls["n"] == 2:  # the second save runs out of space half-way
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Accelerator, "save_state", fills_the_disk)
    cfg = small_config(tmp_path, digits_root, teacher_ckpt, "train.max_steps=4", "train.checkpoint_every=1")
    with pytest.raises(
        CheckpointWriteError,
        match=r"checkpoint step-2 could not be written .*No space left on "
        r"device.*the previous checkpoint is intact: .*step-1",
    ) as e:
        train(cfg)
    assert "\n" not in str(e.value)
    root = Path(cfg.out_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-1"] and ckpt.checkpoint_problem(root / "step-1") is None
    assert run_dir.read_status(Path(cfg.out_dir))["state"] == "stopped"

    calls["n"] = 0
    capsys.readouterr()
    argv = [
        "train",
        "--config",
        str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"),
        f"out_dir={tmp_path / 'cli'}",
        f"data.root={digits_root}",
        "data.batch_size=32",
        "selection.k=24",
        "model.teacher=test_resnet",
        f"model.teacher_checkpoint={teacher_ckpt}",
        "train.max_steps=4",
        "train.checkpoint_every=1",
        "train.progress=false",
        "teacher_train.train_if_missing=false",
    ]
    assert launch.main(argv) == 3 and "could not be written" in capsys.readouterr().err


# ---------------------------------------------------------------- values that validate but cannot train


def test_one_row_per_step_for_a_batchnorm_student_is_refused_before_training(tmp_path, digits_root, teacher_ckpt):
    with pytest.raises(
        ConfigError,
        match=r"'selection.k'=1 leaves 1 row per step for the student "
        r"tv/shufflenet_v2_x0_5, whose BatchNorm layers need 2 or more",
    ):
        train(small_config(tmp_path, digits_root, teacher_ckpt, "selection.k=1"))
    assert not (tmp_path / "run" / "config.yaml").exists()


# ---------------------------------------------------------------- files written whole


def test_atomic_writes_leave_the_old_file_when_the_writer_dies(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_report_skips_a_partial_last_line_and_names_a_damaged_one(first_run, capsys):
    out = Path(first_run.out_dir)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 0.')  # a kill mid-write
    rows = read_metrics(out)
    assert rows[-1]["final"] and "line 6 is incomplete" in capsys.readouterr().out
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:2] + ["garbage"] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=rf"{out / 'metrics.jsonl'} line 3 is not valid JSON"):
        read_metrics(out)


def test_status_says_how_each_run_ended(first_run, tmp_path, capsys):
    out = Path(first_run.out_dir)
    assert launch.main(["status", str(out)]) == 0 and ": finished at step 4" in capsys.readouterr().out
    run_dir.write_status(out, "running", step=3)  # what a SIGKILL leaves: no process holds the lock
    assert launch.main(["status", str(out)]) == 1 and ": killed at step 3" in capsys.readouterr().out
    assert launch.main(["status", str(tmp_path / "nowhere")]) == 2


def test_final_weights_are_swapped_in_whole(first_run):
    out = Path(first_run.out_dir)
    weights = load_file(str(out / "final" / "model.safetensors"))
    assert weights and all(torch.isfinite(v.float()).all() for v in weights.values())
    assert not (out / "final.tmp").exists() and not (out / "final.old").exists()


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(first_run, tmp_path, digits_root, teacher_ckpt, capsys):
    """resume=<step-2> in a folder that also holds step-4: step-4 is another future. Left in place it would
    survive the resumed run's pruning as the 'newest' and a later resume=auto would continue the old run."""
    out = Path(first_run.out_dir)
    old_step4 = snapshot(out / "checkpoints" / "step-4")
    step2 = out / "checkpoints" / "step-2"
    train(
        small_config(
            tmp_path, digits_root, teacher_ckpt, f"resume={step2}", "train.max_steps=3", "train.checkpoint_every=1"
        )
    )
    assert "moved to" in capsys.readouterr().out
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-2", "step-3"]
    aside = [p for p in (out / "checkpoints").iterdir() if p.name.startswith("superseded-")]
    assert len(aside) == 1 and snapshot(aside[0] / "step-4") == old_step4  # kept whole, out of the way
    assert (aside[0] / "final" / "model.safetensors").is_file()  # the weights step-4's future ended on
    assert snapshot(out / "final") != snapshot(aside[0] / "final")  # this run's own, from step 3
    assert train(small_config(tmp_path, digits_root, teacher_ckpt, "resume=auto", "train.max_steps=4"))["step"] == 4


@pytest.mark.parametrize("where", ["run", "run/checkpoints"])
def test_resume_pointed_at_a_run_folder_says_which_folder_to_name(
    first_run, tmp_path, digits_root, teacher_ckpt, where
):
    with pytest.raises(
        ValueError,
        match=rf"a run's folder, not one checkpoint; use resume=auto with "
        rf"out_dir={tmp_path / 'run'}, or name one of its checkpoints/step-N",
    ):
        train(small_config(tmp_path, digits_root, teacher_ckpt, f"resume={tmp_path / where}", "train.max_steps=6"))


def test_resuming_a_finished_run_rewrites_its_final_row_instead_of_repeating_it(
    first_run, tmp_path, digits_root, teacher_ckpt
):
    train(small_config(tmp_path, digits_root, teacher_ckpt, *FIRST, "resume=auto"))  # nothing left to train
    rows = read_rows(first_run.out_dir)
    assert [r["step"] for r in rows if r.get("final")] == [4]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_out_dir_that_is_a_file_is_one_line(tmp_path, digits_root, teacher_ckpt):
    (tmp_path / "run").write_text("my notes")
    with pytest.raises(ValueError, match=r"out_dir=.*run is a file, not a folder"):
        train(small_config(tmp_path, digits_root, teacher_ckpt))
    assert (tmp_path / "run").read_text() == "my notes"
