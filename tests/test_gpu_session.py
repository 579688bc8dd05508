"""benchmarks/gpu_session.sh, the one prepared call of a GPU session, run here in its smoke mode: the
same steps on a CPU at toy size. Checks what comes back from the device tool: at most 8 files, JSON that parses,
every step's exit status recorded, a summary whose tail says how it went; and that a failed step is recorded
and the next one still runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"
STEPS = [
    "env",
    "peak",
    "gpu_tests",
    "bench_resnet18_shufflenetv2",
    "bench_convnext_base_resnet18",
    "profile_unix",
    "profile_kd",
    "profile_unix_eager",
    "teacher_compile_resnet18_shufflenetv2",
    "teacher_compile_convnext_base_resnet18",
    "compile_student",
]


def session(out: Path, work: Path, *words: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), str(out), "smoke", *words],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable, "WORK": str(work), **env},
    )


@pytest.mark.slow
def test_smoke_session_writes_what_the_device_tool_brings_back(tmp_path):
    out = tmp_path / "out"
    run = session(out, tmp_path / "work")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files  # the tool's limit: 8 plain files
    assert files == sorted(
        [
            "summary.txt",
            "session.json",
            "session.log",
            "gpu_tests.xml",
            "bench_resnet18_shufflenetv2.json",
            "bench_convnext_base_resnet18.json",
            "more.tar.gz",
        ]
    )
    record = json.loads((out / "session.json").read_text())
    assert [s["name"] for s in record["steps"]] == STEPS
    assert all(s["rc"] == 0 and s["status"] == "ok" and s["timeout_s"] > 0 for s in record["steps"]), record["steps"]
    env = record["env"]
    assert env["device"].startswith("CPU") and env["versions"]["torch"] and len(env["fingerprint"]) == 16
    assert record["peak"]["peak_flops_per_s"] > 0
    for pair in ("resnet18_shufflenetv2", "convnext_base_resnet18"):
        bench = json.loads((out / f"bench_{pair}.json").read_text())
        assert {r["runner"] for r in bench["rows"]} == {"kd/eager", "random/eager", "unix/eager"}
        assert bench["config"]["data"]["image_size"] == 32 and bench["p2"] and bench["teacher_forward"]
    t = record["targets"]
    assert t["P1a"]["eager"]["predicted"] > 0 and t["P1b"]["eager"]["margin"] is not None
    assert t["P5"]["achieved_tflops"] > 0 and t["teacher_modes"]["convnext_base_resnet18"]["fastest"] == "eager"
    assert set(record["profiles"]) == {"profile_unix", "profile_kd", "profile_unix_eager"}
    with tarfile.open(out / "more.tar.gz") as tar:
        names = set(tar.getnames())
    for name in ("profile_unix", "profile_kd", "profile_unix_eager"):
        assert f"extras/{name}/profile.json" in names
    assert "extras/bench_compile_student_resnet18_shufflenetv2.json" in names
    junit = (out / "gpu_tests.xml").read_text()
    assert "<testsuite" in junit and 'skipped="' in junit  # the GPU tests skip on a CPU, and are listed
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[-1] == "result: every step ok" and any(line.startswith("  P1a") for line in summary)


@pytest.mark.slow
def test_smoke_dali_part(tmp_path):
    """The later call's part (DALI's CPU mode here): DALI tests, parity, the JPEG folder, bench through the loader
    beside timm's KD task; P3 and P4 computed from it."""
    pytest.importorskip("nvidia.dali")
    pytest.importorskip("timm.task", reason="the peer is timm's LogitDistillationTask")
    out = tmp_path / "out"
    run = session(out, tmp_path / "work", "dali")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files
    assert {"bench_pipeline_resnet18_shufflenetv2.json", "preprocess_parity_cpu.json", "gpu_dali_tests.xml"} <= set(
        files
    )
    record = json.loads((out / "session.json").read_text())
    assert [s["name"] for s in record["steps"]] == [
        "env",
        "dali_tests",
        "parity",
        "jpegs",
        "bench_pipeline_resnet18_shufflenetv2",
    ]
    assert all(s["rc"] == 0 for s in record["steps"]), record["steps"]
    d = record["dali"]
    assert d["P3"]["runners"] and d["P4"]["peer"] == "timm-kd" and d["loader_alone_img_per_s"] > 0
    assert d["parity"]["preprocess_parity_cpu"]["photos"] == 24
    bench = json.loads((out / "bench_pipeline_resnet18_shufflenetv2.json").read_text())
    assert {r["mode"] for r in bench["rows"]} == {"synthetic", "pipeline"}


@pytest.mark.slow
def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path):
    """ONLY picks steps; --steps 0 makes bench refuse (exit 2): recorded as failed, the script goes on and exits 1."""
    out = tmp_path / "out"
    run = session(out, tmp_path / "work", ONLY="env,bench_resnet18_shufflenetv2,profile_kd", STEPS="0")
    assert run.returncode == 1, run.stdout[-4000:]
    record = json.loads((out / "session.json").read_text())
    steps = {s["name"]: s for s in record["steps"]}
    assert list(steps) == ["env", "bench_resnet18_shufflenetv2", "profile_kd"]
    assert (
        steps["bench_resnet18_shufflenetv2"]["rc"] == 2 and steps["bench_resnet18_shufflenetv2"]["status"] == "failed"
    )
    assert steps["env"]["rc"] == 0 and steps["profile_kd"]["rc"] == 0
    assert len(list(out.iterdir())) <= 8
    tail = (out / "summary.txt").read_text().splitlines()[-1]
    assert tail == "result: NOT ok: bench_resnet18_shufflenetv2"
    assert "--steps must be >= 1" in (out / "session.log").read_text()


def test_a_step_past_its_limit_is_recorded_as_timeout(tmp_path):
    """BUDGET_S caps every step: a profile given what is left of 25 s (less 8 kept back) on a run of 100,000 steps
    is killed, status timeout."""
    out = tmp_path / "out"
    run = session(out, tmp_path / "work", ONLY="profile_kd", BUDGET_S="25", PROFILE_STEPS="100000", PROFILE_WARMUP="0")
    assert run.returncode == 1
    (step,) = json.loads((out / "session.json").read_text())["steps"]
    assert step["status"] == "timeout" and step["rc"] in (124, 137) and 15 <= step["timeout_s"] <= 17, step


def test_usage():
    bad = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr
    bad = subprocess.run(["bash", str(SCRIPT), "/tmp/x", "nonsense"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_the_fingerprint_names_the_sources_not_the_repository(tmp_path):
    """The device machine's copy of the tree may have no .git: the fingerprint is computed from the files alone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_session", REPO / "benchmarks" / "gpu_session.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for d in ("training", "configs"):
        (tmp_path / d).mkdir()
    (tmp_path / "launch.py").write_text("a")
    (tmp_path / "training" / "x.py").write_text("b")
    first = mod.fingerprint(tmp_path)
    (tmp_path / "training" / "notes.txt").write_text("not a source")
    assert mod.fingerprint(tmp_path) == first
    (tmp_path / "training" / "x.py").write_text("c")
    assert mod.fingerprint(tmp_path) != first


def test_a_measured_peak_replaces_the_table_for_bf16_and_fp16(monkeypatch):
    """UNIXKD_PEAK_FLOPS (what the session script exports after its matmul step) is MFU's denominator, named."""
    import torch

    from unixkd.training.measure.timing import peak_flops

    monkeypatch.setenv("UNIXKD_PEAK_FLOPS", "7.9e14")
    monkeypatch.setenv("UNIXKD_PEAK_BASIS", "bf16 matmul n=8192")
    peak = peak_flops(torch.device("cpu"), "bf16")
    assert peak["flops_per_s"] == 7.9e14 and peak["basis"] == "measured: bf16 matmul n=8192, 790 TFLOP/s"
    assert peak_flops(torch.device("cpu"), "no")["flops_per_s"] is None  # fp32 has no tensor-core peak
    monkeypatch.delenv("UNIXKD_PEAK_FLOPS")
    assert peak_flops(torch.device("cpu"), "bf16")["flops_per_s"] is None
