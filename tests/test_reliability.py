"""Bad data, NaNs, full disks and half-written checkpoints: a clear error, nothing lost (in-process, CPU)."""

from __future__ import annotations

import io
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from PIL import Image

from test_train_e2e import read_rows, small_config
from unixkd import launch
from unixkd.pipeline import preflight, scan_tree
from unixkd.training import checkpoint as ckpt
from unixkd.training.guards import NonFiniteError, all_finite
from unixkd.training.trainer import train

# ---------------------------------------------------------------- a dataset with planted problems


@pytest.fixture()
def planted(tmp_path, digits_root) -> Path:
    """A copy of the digits set with one file of each kind of problem planted in train/."""
    root = tmp_path / "planted"
    shutil.copytree(digits_root, root, ignore=shutil.ignore_patterns("MANIFEST.json"))
    good = next((root / "train" / "3").iterdir())
    data = good.read_bytes()
    (root / "train" / "3" / "zero.jpg").write_bytes(b"")
    (root / "train" / "3" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "train" / "3" / "trailer.jpg").write_bytes(data + b"\x00" * 4000 + b"CAMERA")  # complete, then a trailer
    png = io.BytesIO()
    Image.open(good).save(png, "PNG")
    (root / "train" / "4" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / "train" / "4" / "text.jpg").write_text("this is not a JPEG")
    (root / "train" / "4" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # right magic, no image
    (root / "train" / "4" / "readme.txt").write_text("notes")
    (root / "train" / "empty_class").mkdir()
    (root / "val" / "empty_class").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "empty_class" / "ok.jpg")  # val's copy is not empty
    return root


def test_scan_finds_every_planted_problem_and_writes_a_clean_list(planted, tmp_path, capsys):
    report = scan_tree(planted, workers=2)
    problems = {Path(b.path).name: b.problem for b in report.bad}
    assert problems.keys() == {"zero.jpg", "truncated.jpg", "truncated.png", "text.jpg", "garbage.png"}
    assert problems["zero.jpg"] == "empty" and problems["truncated.jpg"] == problems["truncated.png"] == "truncated"
    assert problems["text.jpg"].startswith("not an image") and problems["garbage.png"].startswith("corrupt")
    assert report.empty_classes == ["train/empty_class"]
    assert report.ignored == ["train/4/readme.txt"]
    assert len(report.good) == 1797 + 2  # + val/empty_class/ok.jpg and the trailer: decodable files are good

    clean = tmp_path / "clean.txt"
    assert launch.main(["scan", str(planted), "--write-clean-list", str(clean), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "bad    train/3/truncated.jpg: truncated" in out and "empty  train/empty_class/" in out
    listed = clean.read_text().splitlines()
    assert len(listed) == 1797 + 2 and "train/3/truncated.jpg" not in listed


def test_preflight_catches_missing_empty_non_image_and_truncated_files(planted):
    files = [str(p) for p in sorted((planted / "train" / "3").iterdir())[:3]]
    files += [str(planted / "train" / "3" / name) for name in ("zero.jpg", "truncated.jpg", "trailer.jpg")]
    files += [str(planted / "train" / "4" / name) for name in ("text.jpg", "truncated.png", "garbage.png")]
    files += [str(planted / "nowhere.jpg")]
    bad = {Path(b.path).name: b.problem for b in preflight(files)}
    # truncated: no end marker in the tail (and PIL cannot decode them); trailer.jpg has data after its marker
    assert bad == {
        "zero.jpg": "empty",
        "text.jpg": "not an image (starts with 74686973)",
        "nowhere.jpg": "missing",
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
        "garbage.png": "corrupt (cannot identify image file)",
    }


def test_training_refuses_bad_data_then_skips_or_uses_the_clean_list(planted, tmp_path, teacher_ckpt, capsys):
    (planted / "train" / "empty_class").rmdir()  # a class folder with no images is a layout error, not a bad file
    (planted / "val" / "empty_class" / "ok.jpg").unlink()
    (planted / "val" / "empty_class").rmdir()
    cfg = small_config(tmp_path, planted, teacher_ckpt, "train.max_steps=1", "data.dataset=folder")
    with pytest.raises(ValueError, match=r"5 bad file\(s\).*data.skip_bad_files=true") as err:
        train(cfg)
    assert "\n" not in str(err.value) and "train/3/truncated.jpg: truncated" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was written

    # skipping leaves the truncated files out too (they would kill the run mid-epoch), the trailer stays in
    train(
        small_config(
            tmp_path, planted, teacher_ckpt, "train.max_steps=1", "data.dataset=folder", "data.skip_bad_files=true"
        )
    )
    assert "pre-flight: skipping 5 bad file(s)" in capsys.readouterr().out

    # the clean list from a scan leaves out the same files
    clean = tmp_path / "clean.txt"
    launch.main(["scan", str(planted), "--write-clean-list", str(clean), "--workers", "2"])
    summary = train(
        small_config(
            tmp_path / "b", planted, teacher_ckpt, "train.max_steps=1", "data.dataset=folder", f"data.file_list={clean}"
        )
    )
    assert summary["val_images"] == 359


def test_nan_stops_before_the_optimizer_touches_the_weights(tmp_path, digits_root, teacher_ckpt, monkeypatch):
    import unixkd.training.step as step_module

    calls = {"loss": 0, "optimizer": 0}
    real_loss, real_opt = step_module.distill_loss, torch.optim.SGD.step

    def poisoned(*args, **kwargs):
        calls["loss"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["loss"] == 3 else loss

    def counted(self, *args, **kwargs):
        calls["optimizer"] += 1
        return real_opt(self, *args, **kwargs)

    monkeypatch.setattr(step_module, "distill_loss", poisoned)
    monkeypatch.setattr(torch.optim.SGD, "step", counted)
    cfg = small_config(tmp_path, digits_root, teacher_ckpt, "train.max_steps=5", "train.checkpoint_every=1")
    with pytest.raises(
        NonFiniteError, match="at step 3: the weights were not updated; last complete checkpoint: .*step-2"
    ):
        train(cfg)
    assert calls == {"loss": 3, "optimizer": 2}
    assert [p.name for p in ckpt.list_checkpoints(cfg.out_dir)] == ["step-1", "step-2"]


def test_nan_skip_mode_skips_the_step_and_counts_it(tmp_path, digits_root, teacher_ckpt, monkeypatch):
    import unixkd.training.step as step_module

    real_loss, n = step_module.distill_loss, {"calls": 0}

    def poisoned(*args, **kwargs):
        n["calls"] += 1
        return real_loss(*args, **kwargs) * (float("inf") if n["calls"] == 2 else 1.0)

    monkeypatch.setattr(step_module, "distill_loss", poisoned)
    cfg = small_config(
        tmp_path, digits_root, teacher_ckpt, "train.max_steps=4", "train.nonfinite=skip", "train.log_every=4"
    )
    train(cfg)
    assert read_rows(cfg.out_dir)[0]["skipped_steps"] == 1


def test_all_finite_looks_at_gradients_too():
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.tensor([1.0, float("nan"), 0.0])
    assert not bool(all_finite(torch.tensor(1.0), [w]))
    w.grad = torch.zeros(3)
    assert bool(all_finite(torch.tensor(1.0), [w])) and not bool(all_finite(torch.tensor(float("inf")), [w]))


def test_full_disk_and_unwritable_out_dir_are_refused_up_front(tmp_path, digits_root, teacher_ckpt, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ValueError, match=r"GiB free, the checkpoints need about"):
        train(small_config(tmp_path, digits_root, teacher_ckpt))
    monkeypatch.undo()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        train(small_config(tmp_path, digits_root, teacher_ckpt, f"out_dir={blocker / 'run'}"))


def test_a_checkpoint_killed_mid_write_is_ignored_and_the_previous_one_resumes(tmp_path, digits_root, teacher_ckpt):
    cfg = small_config(tmp_path, digits_root, teacher_ckpt, "train.max_steps=2", "train.checkpoint_every=1")
    train(cfg)
    root = ckpt.checkpoint_root(cfg.out_dir)
    shutil.copytree(root / "step-2", root / "step-3.tmp")  # what a kill between save_state and rename leaves
    (root / "step-3.tmp" / "model.safetensors").write_bytes(b"half")
    assert ckpt.latest_checkpoint(cfg.out_dir).name == "step-2"
    summary = train(
        small_config(
            tmp_path, digits_root, teacher_ckpt, "train.max_steps=4", "resume=auto", "train.checkpoint_every=1"
        )
    )
    assert summary["step"] == 4 and not (root / "step-3.tmp").exists()
