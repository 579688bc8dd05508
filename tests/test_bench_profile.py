"""`launch.py bench` and `launch.py profile` on the demo config, on CPU: they run, write every field, and their
FLOP columns agree with the docs/algorithms.md §1 formulas computed here from independently counted per-image FLOPs.

The fast path on a CPU: `--fast-path both` resolves to eager and says so; the fused runners and the fused
profile are exercised through the CPU twins ("static": the graph's body over its static buffers), swapped
in where `build_run` resolves the modes. Derived fields (targets, ratios) are recomputed here from the raw
fields of the same result.

Speeds are never asserted: only that times were recorded, one per timed step.
"""

from __future__ import annotations

import importlib
import json
import statistics
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import unixkd.training.fastpath  # noqa: F401 (loads the submodule)
import unixkd.training.measure.profile  # noqa: F401 (loads the submodule)
import unixkd.training.trainer  # noqa: F401 (loads the submodule)
from unixkd import launch, training
from unixkd.selection import GraphedUnixSelector, UnixSelector
from unixkd.selection.graphed import StaticGraph
from unixkd.training.cost import backward_flops
from unixkd.training.models import create_model

pytestmark = pytest.mark.slow

N, K, STEPS = 32, 24, 2
REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")


def cuda(test):
    """Needs a CUDA device: marked `gpu` (what benchmarks/gpu_session.sh runs), skipped elsewhere."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


def overrides(tmp_path, digits_root, teacher_ckpt) -> list[str]:
    return [
        f"out_dir={tmp_path / 'run'}",
        f"data.root={digits_root}",
        f"data.batch_size={N}",
        "model.teacher=test_resnet",
        f"model.teacher_checkpoint={teacher_ckpt}",
        f"selection.k={K}",
    ]


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
    code = launch.main(
        [
            "bench",
            "--config",
            DEMO,
            "--data",
            "both",
            "--peer",
            "timm",
            "--steps",
            str(STEPS),
            "--warmup",
            "1",
            "--json",
            str(out),
            *overrides(tmp_path, digits_root, teacher_ckpt),
        ]
    )
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
    paper = {"kd": 1.0, "random": K / N, "unix": K / N + Fs / (Ft + 2 * Fs), "timm-kd": 1.0}  # docs/algorithms.md §1
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

    # the fast path: on a CPU the run as configured is the eager path, and its rows say so
    assert r["fast_path"]["resolved"] == {"selection": "eager", "teacher": "eager", "student": "eager"}
    assert r["fast_path"]["timed"] == ["eager"] and "resolves to eager" in r["fast_path"]["note"]
    for (_mode, name), row in rows.items():
        ours = name != "timm-kd"
        assert row["selector"] == (name if ours else None) and row["fast_path"] == ("eager" if ours else None)
        assert row["modes"] == ({"selection": "eager", "teacher": "eager", "student": "eager"} if ours else None)
        assert row["eager_fallbacks"] is None
        assert row["flops_per_step"] == pytest.approx(row["flop_ratio_measured"] * N * (Ft + Fs + Bs), rel=1e-9)
        assert row["mfu"] is None  # no peak for a CPU
    assert r["peak"]["flops_per_s"] is None

    # the targets, from the same run's rows: P3 per runner, P4 against the peer, P1 on the synthetic rows
    t = r["targets"]
    loader = r["data_alone"][0]["img_per_s"]
    assert set(t["P3"]["runners"]) == {"kd", "random", "unix"}
    for name, p3 in t["P3"]["runners"].items():
        bound = min(loader, rows[("synthetic", name)]["img_per_s"])
        assert p3["ratio"] == pytest.approx(rows[("pipeline", name)]["img_per_s"] / bound)
        assert p3["pass"] == (p3["ratio"] >= 0.95)
    peer = rows[("pipeline", "timm-kd")]["img_per_s"]
    assert t["P4"]["fused"] is None and set(t["P4"]["eager"]) == {"kd", "unix"}
    for name, threshold in (("kd", 2.0), ("unix", 2.5)):
        p4 = t["P4"]["eager"][name]
        assert p4["ratio"] == pytest.approx(rows[("pipeline", name)]["img_per_s"] / peer)
        assert p4["threshold"] == threshold and p4["pass"] == (p4["ratio"] >= threshold)
    unix = rows[("synthetic", "unix")]
    assert t["P1"]["fused"] is None
    assert t["P1"]["eager"]["margin"] == pytest.approx(unix["step_ratio_kd"] - unix["flop_ratio_measured"])
    assert "fast-path targets (from this run)" in table and "P4" in table


def test_profile_writes_json_and_png_and_counts_each_phase(tmp_path, digits_root, teacher_ckpt, per_image):
    out = tmp_path / "prof"
    code = launch.main(
        [
            "profile",
            "--config",
            DEMO,
            "--selector",
            "unix",
            "--steps",
            str(STEPS),
            "--warmup",
            "1",
            "--out",
            str(out),
            *overrides(tmp_path, digits_root, teacher_ckpt),
        ]
    )
    assert code == 0
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads((out / "profile.json").read_text())
    assert r["selector"] == "unix" and r["environment"]["git_commit"] and r["median_step_ms"] > 0

    phases = r["phases"]
    assert list(phases) == [
        "data_wait",
        "scoring_forward",
        "sort_mix",
        "teacher_forward",
        "student_forward",
        "student_backward",
        "optimizer",
    ]
    for name, p in phases.items():
        assert set(p) == {"median_ms", "time_share", "flops", "flop_share", "achieved_tflops", "mfu", "ms"}, name
        assert len(p["ms"]) == STEPS and p["mfu"] is None  # no peak for a CPU
    assert sum(p["time_share"] for p in phases.values()) == pytest.approx(1.0)
    assert sum(p["flop_share"] for p in phases.values()) == pytest.approx(1.0)

    # FLOPs counted on the real training step, phase by phase, against per-image counts of fresh models
    Ft, Fs, Bs = per_image
    expected = {
        "data_wait": 0,
        "scoring_forward": N * Fs,
        "sort_mix": 0,
        "teacher_forward": K * Ft,
        "student_forward": K * Fs,
        "student_backward": K * Bs,
        "optimizer": 0,
    }
    for name, flops in expected.items():
        assert phases[name]["flops"] == pytest.approx(flops, rel=1e-12, abs=0), name
    assert r["step_flops"] == pytest.approx(K * Ft + (N + K) * Fs + K * Bs, rel=1e-12)


# --------------------------------------------------------------------------------------------------------
# the fast path: both paths side by side, the micro-benchmarks, the targets


def synthetic_args(tmp_path, teacher_ckpt, *extra) -> list[str]:
    """bench on the resident batch only (no dataset, no DALI): the quick way through the runners."""
    return [
        "bench",
        "--config",
        DEMO,
        "--data",
        "synthetic",
        "--steps",
        str(STEPS),
        "--warmup",
        "1",
        "--json",
        str(tmp_path / "bench.json"),
        *extra,
        f"out_dir={tmp_path / 'run'}",
        "model.num_classes=10",
        "model.teacher=test_resnet",
        f"model.teacher_checkpoint={teacher_ckpt}",
        f"data.batch_size={N}",
        f"selection.k={K}",
    ]


@pytest.fixture
def static_twins(monkeypatch):
    """The run resolves its fast path to the CPU twins: UNIX selection and teacher forward over static buffers."""
    monkeypatch.setattr("unixkd.training.build.selection_graph_mode", lambda cfg, device: "static")
    monkeypatch.setattr("unixkd.training.build.teacher_mode", lambda cfg, device, has_features: "static")


def test_bench_fast_path_both_on_cpu_times_the_eager_runners_once(tmp_path, teacher_ckpt, capsys):
    """Documented: where the fused path resolves to eager, `both` says so in one line and times eager only."""
    code = launch.main(synthetic_args(tmp_path, teacher_ckpt, "--fast-path", "both", "--selectors", "kd,unix"))
    assert code == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("fast path:")]
    assert len(notes) == 1 and "timing the eager runners only" in notes[0]
    r = json.loads((tmp_path / "bench.json").read_text())
    assert r["fast_path"]["timed"] == ["eager"] and not r["fast_path"]["fused_differs_from_eager"]
    assert [row["runner"] for row in r["rows"]] == ["kd/eager", "unix/eager"]
    assert "graph" not in json.dumps([row["modes"] for row in r["rows"]])  # no CPU number labelled graph
    assert r["targets"]["P1"]["fused"] is None and r["targets"]["P1"]["eager"] is not None

    # P2 without a fused selection: (a) forward and (b) eager select, interleaved, one time per step
    p2 = r["p2"]
    assert p2["fused_mode"] is None and p2["median_ms"]["unix_fused"] is None and "unix_fused" not in p2["ms"]
    assert all(len(p2["ms"][name]) == STEPS for name in ("student_forward", "unix_eager"))
    assert p2["eager_over_forward"] == pytest.approx(
        statistics.median(p2["ms"]["unix_eager"]) / statistics.median(p2["ms"]["student_forward"])
    )
    assert r["targets"]["P2"]["eager"]["ratio"] == p2["eager_over_forward"] and r["targets"]["P2"]["fused"] is None
    assert p2["N"] == N and p2["k"] == K and set(p2["mfu"].values()) == {None}
    # the teacher forward on k rows: eager alone on a CPU unless asked
    teacher = r["teacher_forward"]
    assert teacher["modes"] == ["eager"] and teacher["rows"] == K and teacher["fastest"] == "eager"
    assert len(teacher["ms"]["eager"]) == STEPS and teacher["errors"] == {}
    # P3 and P4 need pipeline data and the peer: None, not a guess
    assert r["targets"]["P3"]["runners"] is None and r["targets"]["P4"]["peer"] is None


def test_bench_fast_path_both_times_fused_and_eager_side_by_side(tmp_path, teacher_ckpt, static_twins, capsys):
    """With a fused path to time (here the CPU twins), `both` interleaves it with the eager one; ratios and
    targets are taken within each path."""
    code = launch.main(synthetic_args(tmp_path, teacher_ckpt, "--fast-path", "both"))
    assert code == 0
    assert "fast path:" not in capsys.readouterr().out
    r = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["runner"]: row for row in r["rows"]}
    assert list(rows) == ["kd", "random", "unix", "kd/eager", "random/eager", "unix/eager"]
    assert r["fast_path"]["resolved"] == {"selection": "static", "teacher": "static", "student": "eager"}
    assert rows["unix"]["modes"] == {"selection": "static", "teacher": "static", "student": "eager"}
    assert rows["kd"]["modes"]["selection"] == "eager"  # only UNIX has a graph of its selection
    for name in ("kd", "random", "unix"):
        assert rows[name]["fast_path"] == "fused" and rows[f"{name}/eager"]["fast_path"] == "eager"
        assert rows[f"{name}/eager"]["modes"] == {"selection": "eager", "teacher": "eager", "student": "eager"}
        fallbacks = rows[name]["eager_fallbacks"]  # nothing the fused rows timed ran eagerly after all
        assert fallbacks["teacher"] == 0 and fallbacks["selection"] == (0 if name == "unix" else None)
        for path, kd in ((name, "kd"), (f"{name}/eager", "kd/eager")):  # step ratios within a path
            assert rows[path]["step_ratio_kd"] == pytest.approx(
                rows[path]["median_step_ms"] / rows[kd]["median_step_ms"]
            )
    for path, suffix in (("fused", ""), ("eager", "/eager")):
        unix = rows["unix" + suffix]
        p1 = r["targets"]["P1"][path]
        assert p1["margin"] == pytest.approx(unix["step_ratio_kd"] - unix["flop_ratio_measured"])
        assert p1["pass"] == (p1["margin"] <= 0.03)
    p2 = r["p2"]
    assert p2["fused_mode"] == "static" and p2["fused_fallbacks"] == 0 and len(p2["ms"]["unix_fused"]) == STEPS
    assert p2["fused_over_forward"] == pytest.approx(
        statistics.median(p2["ms"]["unix_fused"]) / statistics.median(p2["ms"]["student_forward"])
    )


def test_bench_runners_own_their_static_buffers(teacher_ckpt, static_twins):
    """Each fused runner has its own graphed selector and teacher forward (their outputs live in buffers the next
    replay overwrites, one graph per shape); eager runners call the plain selector and the modules."""
    from unixkd.training.build import make_selector
    from unixkd.training.distributed import make_accelerator
    from unixkd.training.measure.bench import build_runners
    from unixkd.training.measure.timing import build_timed_run, load_timing_config

    cfg = load_timing_config(
        DEMO,
        [
            "model.teacher=test_resnet",
            f"model.teacher_checkpoint={teacher_ckpt}",
            "model.num_classes=10",
            f"data.batch_size={N}",
            f"selection.k={K}",
        ],
        "synthetic",
    )
    accelerator = make_accelerator(cfg)
    run = build_timed_run(cfg, accelerator, 10)
    fused = {name: make_selector(cfg, accelerator, name, run.ledger) for name in ("kd", "unix")}
    runners, path = build_runners(run, fused, ["synthetic", "pipeline"], "both", device=accelerator.device)
    assert path["timed"] == ["fused", "eager"] and len(runners) == 8
    on_fused = [r.distill for r in runners if r.fast_path == "fused"]
    on_eager = [r.distill for r in runners if r.fast_path == "eager"]
    teachers = [s.teacher_call for s in on_fused]
    assert all(isinstance(t, training.fastpath.TeacherForward) and t.mode == "static" for t in teachers)
    assert len({id(t) for t in teachers}) == 4 and run.step.teacher_call not in teachers
    unix = [s.selector for s in on_fused if isinstance(s.selector, GraphedUnixSelector)]
    assert len(unix) == 2 and unix[0] is not unix[1] and fused["unix"] not in unix
    assert all(s.teacher_call is run.teacher and s.student_call is s.student for s in on_eager)
    assert sum(type(s.selector) is UnixSelector for s in on_eager) == 2


def test_bench_teacher_modes_option():
    from unixkd.training.config import ConfigError
    from unixkd.training.measure.bench_micro import teacher_modes_for

    cpu = torch.device("cpu")
    assert teacher_modes_for("auto", cpu) == ["eager"] and teacher_modes_for("none", cpu) == []
    assert teacher_modes_for("eager,compile,eager", cpu) == ["eager", "compile"]
    assert teacher_modes_for("auto", torch.device("cuda")) == ["eager", "graph", "compile"]
    for bad in ("graph", "eager,fast", ""):
        with pytest.raises(ConfigError, match="--teacher-modes"):
            teacher_modes_for(bad, cpu)


class CaptureLikeStaticGraph(StaticGraph):
    """The CPU twin with what a CUDA capture does first: `warmup` calls of its body (torch.cuda.graphs asks for
    them before capturing). Under FlopCounterMode they would be counted: a profile that counted the graphed
    step itself would report 4× the selection's and the teacher's FLOPs."""

    def __init__(self, fn, inputs, *, device, capture, warmup=3, preserve=()):
        super().__init__(fn, inputs, device=device, capture=False, warmup=warmup, preserve=preserve)
        self.warm_up(warmup, preserve)


def test_profile_with_a_graphed_selection_counts_its_flops_once(
    tmp_path, digits_root, teacher_ckpt, per_image, static_twins, monkeypatch
):
    graphed_module = importlib.import_module("unixkd.selection.graphed")  # `selection.graphed` is also a function
    monkeypatch.setattr(graphed_module, "StaticGraph", CaptureLikeStaticGraph)
    monkeypatch.setattr(training.fastpath, "StaticGraph", CaptureLikeStaticGraph)
    Ft, Fs, Bs = per_image
    common = [
        "--selector",
        "unix",
        "--steps",
        str(STEPS),
        "--warmup",
        "1",
        *overrides(tmp_path, digits_root, teacher_ckpt),
    ]
    assert launch.main(["profile", "--config", DEMO, "--out", str(tmp_path / "fused"), *common]) == 0
    r = json.loads((tmp_path / "fused" / "profile.json").read_text())
    assert r["fast_path"]["modes"] == {"selection": "static", "teacher": "static", "student": "eager"}
    phases = r["phases"]
    assert list(phases) == [
        "data_wait",
        "selection_fused",
        "teacher_forward",
        "student_forward",
        "student_backward",
        "optimizer",
    ]  # hooks do not see inside a replay: one phase
    expected = {
        "selection_fused": N * Fs,
        "teacher_forward": K * Ft,
        "student_forward": K * Fs,
        "student_backward": K * Bs,
    }
    for name, flops in expected.items():
        assert phases[name]["flops"] == pytest.approx(flops, rel=1e-12, abs=0), name
    assert r["step_flops"] == pytest.approx(K * Ft + (N + K) * Fs + K * Bs, rel=1e-12)
    assert all(len(p["ms"]) == STEPS and p["mfu"] is None for p in phases.values()) and r["mfu"] is None
    assert (tmp_path / "fused" / "profile.png").is_file()

    # --fast-path eager on the same run: the split is back, the same FLOPs. And on a machine without
    # matplotlib (the GPU box) the numbers are still written, only the PNG is missing.
    def no_matplotlib(result, path):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(training.measure.profile, "plot", no_matplotlib)
    assert (
        launch.main(["profile", "--config", DEMO, "--fast-path", "eager", "--out", str(tmp_path / "eager"), *common])
        == 0
    )
    assert not (tmp_path / "eager" / "profile.png").exists()
    r = json.loads((tmp_path / "eager" / "profile.json").read_text())
    assert r["fast_path"]["modes"] == {"selection": "eager", "teacher": "eager", "student": "eager"}
    assert r["phases"]["scoring_forward"]["flops"] == pytest.approx(N * Fs, rel=1e-12)
    assert r["phases"]["sort_mix"]["flops"] == 0


@cuda
def test_bench_fused_rows_replay_graphs_without_eager_fallbacks(tmp_path, teacher_ckpt):
    """On a GPU: the fused rows run from CUDA graphs (selection and teacher), none of their calls fell back to
    eager, P2 has its fused number and the teacher micro-benchmark all three modes (or compile's error)."""
    code = launch.main(synthetic_args(tmp_path, teacher_ckpt, "--fast-path", "both", "mixed_precision=bf16"))
    assert code == 0
    r = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["runner"]: row for row in r["rows"]}
    assert rows["unix"]["modes"]["selection"] == "graph" and rows["unix"]["modes"]["teacher"] == "graph"
    assert rows["unix/eager"]["modes"] == {"selection": "eager", "teacher": "eager", "student": "eager"}
    for name in ("kd", "random", "unix"):
        assert all(not n for n in rows[name]["eager_fallbacks"].values()), rows[name]["eager_fallbacks"]
    assert r["p2"]["fused_mode"] == "graph" and r["p2"]["fused_fallbacks"] == 0
    assert set(r["teacher_forward"]["median_ms"]) | set(r["teacher_forward"]["errors"]) == {"eager", "graph", "compile"}


# --------------------------------------------------------------------------------------------------------
# where the results go: a wrong place is refused before the timing, a rerun keeps the earlier result


def test_results_into_the_wrong_kind_of_path_are_refused_before_anything_is_timed(tmp_path, teacher_ckpt, capsys):
    args = synthetic_args(tmp_path, teacher_ckpt)
    args[args.index("--json") + 1] = str(tmp_path)  # a folder where a file goes
    assert launch.main(args) == 2
    err = capsys.readouterr().err
    assert f"--json {tmp_path}: is a folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    args[args.index("--json") + 1] = str(a_file / "bench.json")  # a file where a folder of the path goes
    assert launch.main(args) == 2
    assert "a part of its folder path is a file" in capsys.readouterr().err
    a_file.write_text("mine")
    profile = ["profile", "--config", DEMO, "--data", "synthetic", "--out", str(a_file), "model.num_classes=10"]
    assert launch.main([*profile, f"model.teacher_checkpoint={teacher_ckpt}"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and a_file.read_text() == "mine"


def test_a_rerun_into_the_same_result_file_keeps_the_earlier_one(tmp_path, teacher_ckpt, capsys):
    args = synthetic_args(tmp_path, teacher_ckpt, "--selectors", "kd", "--teacher-modes", "none")
    assert launch.main(args) == 0
    first = json.loads((tmp_path / "bench.json").read_text())
    assert launch.main(args) == 0
    kept = [p for p in tmp_path.glob("bench.*.json")]
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == first  # the first result, untouched
    assert f"the earlier result is now {kept[0]}" in capsys.readouterr().out
    assert json.loads((tmp_path / "bench.json").read_text())["kind"] == "unixkd bench"  # the new one in its place
