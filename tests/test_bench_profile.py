"""`launch.py bench` and `launch.py profile` on the demo config, on CPU: they run, write every field, and their
FLOP columns agree with the SPEC §1 formulas computed here from independently counted per-image FLOPs.

Speeds are never asserted: only that times were recorded, one per timed step.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import launch
from training.cost import backward_flops
from training.models import create_model

pytestmark = pytest.mark.slow

N, K, STEPS = 32, 24, 2
DEMO = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")


def overrides(tmp_path, digits_root, teacher_ckpt) -> list[str]:
    return [f"out_dir={tmp_path / 'run'}", f"data.root={digits_root}", f"data.batch_size={N}",
            "model.teacher=test_resnet", f"model.teacher_checkpoint={teacher_ckpt}", f"selection.k={K}"]


def forward_flops_here(name: str) -> int:
    """F for one 32 px image, counted here (forward convolutions need no fix)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        create_model(name, 10).eval()(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def per_image():
    Ft, Fs = forward_flops_here("test_resnet"), forward_flops_here("tv/shufflenet_v2_x0_5")
    return Ft, Fs, backward_flops(create_model("tv/shufflenet_v2_x0_5", 10), 32)


def test_bench_both_modes_with_the_timm_peer(tmp_path, digits_root, teacher_ckpt, per_image, capsys):
    out = tmp_path / "bench.json"
    code = launch.main(["bench", "--config", DEMO, "--data", "both", "--peer", "timm", "--steps", str(STEPS),
                        "--warmup", "1", "--json", str(out), *overrides(tmp_path, digits_root, teacher_ckpt)])
    assert code == 0
    table = capsys.readouterr().out
    r = json.loads(out.read_text())

    env = r["environment"]
    assert env["device"] and env["git_commit"] and env["versions"]["torch"] == torch.__version__
    assert env["versions"]["dali"] and env["versions"]["timm"]
    assert r["config"]["data"]["batch_size"] == N and r["teacher_weights"] == str(teacher_ckpt)
    assert "LogitDistillationTask" in r["peer"]

    Ft, Fs, Bs = per_image
    assert r["flops_per_image"] == {"Ft": Ft, "Fs": Fs, "Bs": Bs}
    paper = {"kd": 1.0, "random": K / N, "unix": K / N + Fs / (Ft + 2 * Fs), "timm-kd": 1.0}  # SPEC §1
    measured = {"kd": 1.0, "random": K / N, "unix": K / N + Fs / (Ft + Fs + Bs), "timm-kd": 1.0}
    rows = {(row["mode"], row["runner"]): row for row in r["rows"]}
    assert set(rows) == {(m, s) for m in ("synthetic", "pipeline") for s in ("kd", "random", "unix", "timm-kd")}
    for (mode, name), row in rows.items():
        assert row["flop_ratio_paper"] == pytest.approx(paper[name], rel=1e-9), (mode, name)
        assert row["flop_ratio_measured"] == pytest.approx(measured[name], rel=1e-9), (mode, name)
        assert row["teacher_images_per_step"] == (N if name in ("kd", "timm-kd") else K)
        assert len(row["step_ms"]) == STEPS and all(t > 0 for t in row["step_ms"])
        assert row["median_step_ms"] == pytest.approx(statistics.median(row["step_ms"]))
        assert row["img_per_s"] == pytest.approx(N / (row["median_step_ms"] / 1e3))
        assert row["step_ratio_kd"] == pytest.approx(row["median_step_ms"] / rows[(mode, "kd")]["median_step_ms"])
        assert len(row["data_wait_ms"]) == (STEPS if mode == "pipeline" else 0)
        assert name in table
    assert [d["loader"].split()[0] for d in r["data_alone"]] == ["DaliLoader", "torchvision"]
    assert all(d["img_per_s"] > 0 and len(d["batch_ms"]) == STEPS for d in r["data_alone"])


def test_profile_writes_json_and_png_and_counts_each_phase(tmp_path, digits_root, teacher_ckpt, per_image):
    out = tmp_path / "prof"
    code = launch.main(["profile", "--config", DEMO, "--selector", "unix", "--steps", str(STEPS), "--warmup", "1",
                        "--out", str(out), *overrides(tmp_path, digits_root, teacher_ckpt)])
    assert code == 0
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads((out / "profile.json").read_text())
    assert r["selector"] == "unix" and r["environment"]["git_commit"] and r["median_step_ms"] > 0

    phases = r["phases"]
    assert list(phases) == ["data_wait", "scoring_forward", "sort_mix", "teacher_forward", "student_forward",
                            "student_backward", "optimizer"]
    for name, p in phases.items():
        assert set(p) == {"median_ms", "time_share", "flops", "flop_share", "achieved_tflops", "ms"}, name
        assert len(p["ms"]) == STEPS
    assert sum(p["time_share"] for p in phases.values()) == pytest.approx(1.0)
    assert sum(p["flop_share"] for p in phases.values()) == pytest.approx(1.0)

    # FLOPs counted on the real training step, phase by phase, against per-image counts of fresh models
    Ft, Fs, Bs = per_image
    expected = {"data_wait": 0, "scoring_forward": N * Fs, "sort_mix": 0, "teacher_forward": K * Ft,
                "student_forward": K * Fs, "student_backward": K * Bs, "optimizer": 0}
    for name, flops in expected.items():
        assert phases[name]["flops"] == pytest.approx(flops, rel=1e-12, abs=0), name
    assert r["step_flops"] == pytest.approx(K * Ft + (N + K) * Fs + K * Bs, rel=1e-12)
