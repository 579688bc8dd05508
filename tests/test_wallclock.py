"""The wall-clock budget (training/wallclock.py) and compare --seeds (training/compare.py).

Arithmetic on recorded phase times (hand-computable), the refusal, the interpolation, that calibrating
changes nothing a run trains with, that a resume keeps k, and compare's resumability and aggregates.
No test asserts a speed: the k-choice tests use recorded times, the end-to-end ones fix the choice.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unixkd import launch
from unixkd.training import wallclock
from unixkd.training.compare import summarize
from unixkd.training.config import ConfigError, load_config
from unixkd.training.errors import UserError
from unixkd.training.wallclock import Calibration, PhaseModel, WallclockBudgetError, interpolate, nondecreasing

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
N, K = 32, 24

# recorded phase times (ms) of a UNIX step at k = 16 and of KD's step at N = 32: every number below follows
# from these by hand
UNIX_16 = {
    "data_wait": 0.0,
    "scoring_forward": 5.0,
    "sort_mix": 1.0,
    "teacher_forward": 10.0,
    "student_forward": 4.0,
    "student_backward": 8.0,
    "optimizer": 2.0,
}
KD_32 = {
    "data_wait": 0.0,
    "scoring_forward": 0.0,
    "sort_mix": 0.0,
    "teacher_forward": 20.0,
    "student_forward": 8.0,
    "student_backward": 16.0,
    "optimizer": 2.0,
}


def recorded(points=None, kd=None, n=N) -> PhaseModel:
    return PhaseModel("unix", n, points or [{"k": 16, "ms": dict(UNIX_16)}], dict(kd or KD_32), {"device": "cpu"})


# ---------------------------------------------------------------------------------------------------------
# interpolation


def test_interpolate_is_linear_between_points_and_extends_the_end_segments():
    pts = [(16, 10.0), (32, 20.0), (48, 40.0)]
    assert interpolate(pts, 16) == 10.0 and interpolate(pts, 48) == 40.0
    assert interpolate(pts, 24) == 15.0  # halfway along the first segment
    assert interpolate(pts, 40) == 30.0  # halfway along the second
    assert interpolate(pts, 8) == 5.0  # the first segment extended below
    assert interpolate(pts, 64) == 60.0  # the last one extended above
    assert interpolate([(16, 7.0)], 3) == 7.0  # one point: flat
    assert interpolate([(32, 1.0), (16, 0.0)], 24) == 0.5  # order does not matter
    with pytest.raises(ValueError):
        interpolate([], 1)


def test_nondecreasing_pools_a_noisy_dip():
    # more rows never take less time: 3 then 2 becomes 2.5, 2.5 (least squares under the order constraint)
    assert nondecreasing([(1, 1.0), (2, 3.0), (3, 2.0)]) == [(1, 1.0), (2, 2.5), (3, 2.5)]
    assert nondecreasing([(3, 3.0), (1, 1.0), (2, 2.0)]) == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert nondecreasing([(1, 5.0), (2, 1.0), (3, 0.0)]) == [(1, 2.0), (2, 2.0), (3, 2.0)]


# ---------------------------------------------------------------------------------------------------------
# the k choice on recorded phase times


def test_predicted_steps_from_recorded_phase_times():
    m = recorded()
    assert m.kd_ms() == 46.0  # 20 + 8 + 16 + 2 (+ KD's empty selection)
    assert m.predict_ms(16) == 30.0  # 5 + 1 + 10 + 4 + 8 + 2: the measured point itself
    assert m.predict_ms(32) == 52.0  # selection 6 (flat: one point) + KD's rows 46
    # k = 24: rows halfway between the point (24 ms) and KD's (46 ms) = 35, + selection 6
    assert m.predict_ms(24) == 41.0
    assert m.fraction(24) == pytest.approx(41 / 46)
    assert m.selection_ms() == 6.0


def test_the_largest_k_within_the_budget():
    m = recorded()
    # rows(k) = 24 + (k - 16) * 22/16 for k >= 16; T(k) = 6 + rows(k) <= 0.8 * 46 = 36.8  <=>  k <= 20.65
    assert m.choose_k(0.8) == 20
    assert m.predict_ms(20) <= 0.8 * 46 < m.predict_ms(21)
    # T(k) <= 46  <=>  rows(k) <= 40  <=>  k <= 27.6
    assert m.choose_k(1.0) == 27
    assert m.choose_k(2.0) == N  # more than UNIX can spend: capped at N
    # below the point: rows extend the segment down (1.375 ms a row): T(8) = 6 + 13 = 19 = 0.413 of KD
    assert m.choose_k(19 / 46) == 8


def test_several_points_are_interpolated_piecewise():
    points = [
        {"k": 8, "ms": {"scoring_forward": 4.0, "sort_mix": 0.0, "teacher_forward": 4.0, "student_forward": 4.0}},
        {"k": 16, "ms": {"scoring_forward": 6.0, "sort_mix": 2.0, "teacher_forward": 12.0, "student_forward": 4.0}},
    ]
    kd = {"teacher_forward": 20.0, "student_forward": 12.0}
    m = recorded(points, kd)
    # the forward on all N is one number whatever k: the median of its measurements (4 and 6) = 5
    # sort_mix: 0 at 8, 2 at 16 -> 1 at 12; teacher 4 -> 12 -> 20 (at 32): 8 at 12, 16 at 24;
    # student 4, 4, 12: 4 at 12, 8 at 24; backward and optimizer: not measured -> 0
    assert m.phases_at(12) == {
        "scoring_forward": 5.0,
        "sort_mix": 1.0,
        "teacher_forward": 8.0,
        "student_forward": 4.0,
        "student_backward": 0.0,
        "optimizer": 0.0,
    }
    assert m.predict_ms(24) == 5.0 + 4.0 + 16.0 + 8.0  # sort_mix extends its segment: 4 at 24
    # raw samples, when recorded, are what the forward on N is the median of
    points[0]["samples"] = {"scoring_forward": [3.0, 4.0, 100.0]}
    points[1]["samples"] = {"scoring_forward": [6.0, 7.0]}
    assert recorded(points, kd).phases_at(12)["scoring_forward"] == 6.0  # median of 3, 4, 6, 7, 100


def test_a_budget_the_scoring_pass_alone_takes_is_refused_in_one_line():
    m = recorded()  # the selection alone: 6 of KD's 46 ms = 0.1304; the smallest k (1): T = 6 + 3.375 = 9.375
    with pytest.raises(WallclockBudgetError) as e:
        m.choose_k(0.13)
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    assert "selection.budget=0.13" in msg and "scoring pass alone" in msg and "0.1304" in msg
    assert f"{9.375 / 46:.4f}" in msg  # the minimum that fits, named
    with pytest.raises(WallclockBudgetError, match="leaves no k") as e:
        m.choose_k(0.15)  # above the scoring pass, below one row's worth
    assert f"{9.375 / 46:.4f}" in str(e.value)
    assert m.choose_k(9.375 / 46) == 1
    with pytest.raises(WallclockBudgetError, match=f"{(6 + 4.75) / 46:.4f}"):
        m.choose_k(0.2, k_min=2)  # BatchNorm: two rows at least, T(2) = 6 + 4.75
    with pytest.raises(WallclockBudgetError, match="must be > 0"):
        m.choose_k(0.0)


def test_decide_prints_k_and_both_fractions_and_round_trips():
    from unixkd.training.cost import CostLedger

    ledger = CostLedger(Ft=38.0, Fs=1.0, Bs=2.0)
    cal = wallclock.decide(recorded(), 0.8, ledger)
    assert cal.k == 20
    assert cal.flop_fraction == pytest.approx(20 / 32 + 1 / 40)  # k/N + F_s/(F_t + 2 F_s)
    assert cal.flop_fraction_measured == pytest.approx(20 / 32 + 1 / 41)
    line = cal.describe()
    assert "k = 20 of N = 32" in line and f"{cal.predicted_fraction:.4f}" in line and "FLOP fraction" in line
    again = Calibration.from_state(json.loads(json.dumps(cal.state_dict())))
    assert again.k == 20 and again.model == cal.model and again.predicted_fraction == cal.predicted_fraction


def test_config_takes_wallclock_and_make_selector_wants_its_k(digits_root, teacher_ckpt):
    from unixkd.training.build import make_selector
    from unixkd.training.distributed import make_accelerator

    cfg = small_config(Path("/tmp/unused"), digits_root, teacher_ckpt, "selection.budget=0.8")
    assert wallclock.enabled(cfg) and cfg.selection.calibration_steps >= 1
    with pytest.raises(ConfigError, match="calibration_steps"):
        small_config(Path("/tmp/unused"), digits_root, teacher_ckpt, "selection.calibration_steps=0")
    accelerator = make_accelerator(cfg)
    with pytest.raises(ValueError, match="calibration"):
        make_selector(cfg, accelerator, "unix")
    assert make_selector(cfg, accelerator, "unix", k=7).k == 7
    assert make_selector(cfg, accelerator, "kd") is not None  # KD keeps every row: no k to choose


def test_summarize_means_stds_and_wall_fraction_per_seed():
    runs = [
        {
            "method": "kd",
            "seed": 0,
            "top1": 90.0,
            "train_s": 10.0,
            "cost_fraction": 1.0,
            "teacher_images": 64,
            "step": 2,
        },
        {
            "method": "kd",
            "seed": 1,
            "top1": 92.0,
            "train_s": 12.0,
            "cost_fraction": 1.0,
            "teacher_images": 64,
            "step": 2,
        },
        {
            "method": "unix",
            "seed": 0,
            "top1": 89.0,
            "train_s": 8.0,
            "cost_fraction": 0.77,
            "teacher_images": 48,
            "step": 2,
        },
        {
            "method": "unix",
            "seed": 1,
            "top1": 91.0,
            "train_s": 9.0,
            "cost_fraction": 0.77,
            "teacher_images": 48,
            "step": 2,
        },
    ]
    kd, unix = summarize(runs, ["kd", "unix"])
    assert (kd["n"], kd["top1"], kd["top1_std"]) == (2, 91.0, pytest.approx(2**0.5))
    assert kd["wall_fraction"] == 1.0 and kd["wall_fraction_std"] == 0.0
    assert unix["wall_fraction"] == pytest.approx((0.8 + 0.75) / 2)  # per seed: 8/10 and 9/12
    assert unix["wall_fraction_std"] == pytest.approx(statistics.stdev([0.8, 0.75]))
    assert unix["teacher_images_per_step"] == 24 and unix["cost_fraction"] == pytest.approx(0.77)
    assert summarize(runs[2:], ["unix"])[0]["wall_fraction"] is None  # no KD run to compare against


# ---------------------------------------------------------------------------------------------------------
# the calibration on a real (small) run: it changes nothing the run trains with


def small_config(tmp_path: Path, digits_root: Path, teacher_ckpt: Path, *extra: str):
    return load_config(
        str(DEMO),
        [
            f"out_dir={tmp_path / 'run'}",
            f"data.root={digits_root}",
            f"data.batch_size={N}",
            "data.val_batch_size=128",
            "model.teacher=test_resnet",
            "model.student=tv/shufflenet_v2_x0_5",
            f"model.teacher_checkpoint={teacher_ckpt}",
            "teacher_train.train_if_missing=false",
            "selection.method=unix",
            "selection.budget_convention=wallclock",
            "selection.calibration_steps=1",
            "selection.calibration_warmup=0",
            f"selection.k={K}",
            "train.max_steps=4",
            "train.log_every=2",
            "train.progress=false",
            "optim.lr=0.05",
            *extra,
        ],
    )


def test_measuring_puts_back_weights_optimizer_schedule_and_rngs(tmp_path, digits_root, teacher_ckpt):
    from unixkd.training.distributed import make_accelerator
    from unixkd.training.measure.timing import build_timed_run

    cfg = small_config(
        tmp_path, digits_root, teacher_ckpt, "data.batch_size=8", "selection.k=6", "optim.warmup_epochs=0.5"
    )
    accelerator = make_accelerator(cfg)
    run = build_timed_run(cfg, accelerator, 10, steps_per_epoch=10)
    student = accelerator.unwrap_model(run.student)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    lr, rng = run.optimizer.param_groups[0]["lr"], torch.get_rng_state()
    models = wallclock.measure(run, cfg, accelerator, 10, ["unix", "random"], steps=1, warmup=1)
    assert set(models) == {"unix", "random"}
    m = models["unix"]
    assert [p["k"] for p in m.points] == [2, 4, 6]  # N/4, N/2, 3N/4 of 8 (BatchNorm: at least 2)
    assert set(m.kd) >= {"teacher_forward", "student_forward", "student_backward", "optimizer"}
    assert m.points[0]["samples"]["scoring_forward"] and models["random"].points[0]["ms"]["scoring_forward"] == 0
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert run.optimizer.param_groups[0]["lr"] == lr and not run.optimizer.state  # no momentum left behind
    assert run.scheduler.last_epoch == 0 and torch.equal(torch.get_rng_state(), rng)


# ---------------------------------------------------------------------------------------------------------
# end to end (slow): the refusal, a calibrated run trains as selection.k=<its k>, a resume keeps k


@pytest.mark.slow
def test_a_budget_below_the_scoring_pass_is_one_line_and_exit_2(tmp_path, digits_root, teacher_ckpt, capsys):
    cfg = small_config(tmp_path, digits_root, teacher_ckpt)
    args = [f"{k}={v}" for k, v in _flat_overrides(cfg).items()] + ["selection.budget=0.001"]
    code = launch.main(["train", "--config", str(DEMO), *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "selection.budget=0.001" in err[0] and "smallest budget" in err[0]
    assert not (Path(cfg.out_dir) / "checkpoints").exists() and not (Path(cfg.out_dir) / "config.yaml").exists()


def _flat_overrides(cfg) -> dict:
    return {
        "out_dir": cfg.out_dir,
        "data.root": cfg.data.root,
        "data.batch_size": cfg.data.batch_size,
        "model.teacher": cfg.model.teacher,
        "model.teacher_checkpoint": cfg.model.teacher_checkpoint,
        "teacher_train.train_if_missing": "false",
        "selection.method": "unix",
        "selection.budget_convention": "wallclock",
        "selection.calibration_steps": 1,
        "selection.calibration_warmup": 0,
        "train.progress": "false",
    }


@pytest.mark.slow
def test_a_calibrated_run_resumes_with_its_k_and_trains_as_that_k(
    tmp_path, digits_root, teacher_ckpt, monkeypatch, capsys
):
    fixed = ["data.crop_scale=[0.08,1.0]", "data.hflip=true", "optim.warmup_epochs=0.05", "selection.budget=0.8"]
    # the real calibration runs (and must put everything back); only its verdict is fixed, times being noise
    monkeypatch.setattr(PhaseModel, "choose_k", lambda self, budget, k_min=1: 13)
    first = small_config(tmp_path / "a", digits_root, teacher_ckpt, *fixed, "train.max_steps=3")
    launch_train(first)
    out = Path(first.out_dir)
    record = json.loads((out / wallclock.RECORD).read_text())
    assert record["k"] == 13 and record["budget"] == 0.8 and len(record["model"]["points"]) == 3
    assert "wall-clock budget 0.8 of KD" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("wall_fraction" in r and "step_ms" in r for r in rows if "loss" in r)
    assert rows[0]["wall_fraction"] == pytest.approx(rows[0]["step_ms"] / record["kd_step_ms"])

    def no_calibration(*a, **k):
        raise AssertionError("a resumed run must not calibrate again")

    monkeypatch.setattr(wallclock, "measure", no_calibration)
    resumed = small_config(tmp_path / "a", digits_root, teacher_ckpt, *fixed, "train.max_steps=7", "resume=auto")
    summary = launch_train(resumed)
    assert "k = 13 from the checkpoint's calibration" in capsys.readouterr().out
    assert summary["k"] == 13 and summary["teacher_images"] == 7 * 13

    other = small_config(tmp_path / "a", digits_root, teacher_ckpt, *fixed, "train.max_steps=8", "resume=auto")
    other.selection.budget = 0.7
    with pytest.raises(UserError, match="calibrated for selection.budget=0.8"):
        launch_train(other)

    # the same run told k = 13 outright: bit for bit the calibrated-then-resumed one
    plain = small_config(tmp_path / "b", digits_root, teacher_ckpt, *fixed[:3], "train.max_steps=7", "selection.k=13")
    plain.selection.budget_convention = "paper"
    launch_train(plain)
    a = load_file(str(out / "final" / "model.safetensors"))
    b = load_file(str(Path(plain.out_dir) / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def launch_train(cfg):
    from unixkd.training.trainer import train

    return train(cfg)


@pytest.mark.slow
def test_compare_seeds_resumes_reuses_and_aggregates(tmp_path, digits_root, teacher_ckpt, monkeypatch, capsys):
    import unixkd.training.trainer  # noqa: F401 (loads the submodule)
    from unixkd import training

    args = [
        "compare",
        "--config",
        str(DEMO),
        "--methods",
        "kd,random",
        "--seeds",
        "0,1",
        f"out_dir={tmp_path / 'cmp'}",
        f"data.root={digits_root}",
        f"data.batch_size={N}",
        "model.teacher=test_resnet",
        f"model.teacher_checkpoint={teacher_ckpt}",
        "teacher_train.train_if_missing=false",
        f"selection.k={K}",
        "train.max_steps=2",
        "train.progress=false",
    ]
    real_train, calls = training.trainer.train, []

    def interrupted_after_two(cfg, *a, **k):  # Ctrl-C during the third run
        calls.append(Path(cfg.out_dir).name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train(cfg, *a, **k)

    monkeypatch.setattr(training.trainer, "train", interrupted_after_two)
    assert launch.main(args) == 130
    assert calls == ["kd-seed0", "random-seed0", "kd-seed1"]

    calls.clear()

    def counted(cfg, *a, **k):
        calls.append(Path(cfg.out_dir).name)
        return real_train(cfg, *a, **k)

    monkeypatch.setattr(training.trainer, "train", counted)
    capsys.readouterr()
    assert launch.main(args) == 0
    out = capsys.readouterr().out
    assert calls == ["kd-seed1", "random-seed1"]  # the two finished runs were reused, not trained again
    assert "kd seed 0: finished earlier" in out and "random seed 0: finished earlier" in out
    assert "± " in out and "wall/KD" in out

    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [("kd", 0), ("random", 0), ("kd", 1), ("random", 1)]
    assert result["complete"] and result["seeds"] == [0, 1]
    by = {s["method"]: s for s in result["summary"]}
    top1 = [r["top1"] for r in result["runs"] if r["method"] == "random"]
    assert by["random"]["top1"] == pytest.approx(statistics.fmean(top1))
    assert by["random"]["top1_std"] == pytest.approx(statistics.stdev(top1))
    assert by["random"]["cost_fraction"] == pytest.approx(K / N) and by["kd"]["wall_fraction"] == 1.0
    assert by["random"]["wall_fraction"] is not None and by["random"]["n"] == 2
    png = tmp_path / "cmp" / "compare_cost.png"
    assert png.stat().st_size > 5000

    # a run of another config in the same folders is refused, never reused
    calls.clear()
    assert launch.main([*args, "optim.lr=0.2"]) == 2
    assert calls == [] and "holds a run of another config" in capsys.readouterr().err
    png.unlink()
    assert launch.main(["report", str(tmp_path / "cmp")]) == 0 and png.is_file()  # the figure from compare.json
