"""benchmarks/gpu_session.sh's records: the machine, the measured matmul peak, and the summary of one session.

    python benchmarks/gpu_session.py env WORK/env.json            # device, driver, versions, commit, fingerprint
    python benchmarks/gpu_session.py peak WORK/peak.json [--smoke] # bf16 matmul TFLOP/s: the MFU denominator (P5)
    python benchmarks/gpu_session.py summary WORK OUT             # OUT/session.json + OUT/summary.txt
    python benchmarks/gpu_session.py fingerprint                  # the source fingerprint of this checkout

`summary` reads only JSON and the step table (no torch import: it runs after every step, in a second).
The targets it computes, from the files of the same session (benchmarks/README.md, "GPU session"):

* P1a (resnet18 -> shufflenet_v2_x0_5): UNIX/KD step time <= the phase-time prediction + 0.02, where the
  prediction is (Random's step + a bare no-grad student forward on the N images) / KD's step, all medians from
  the same bench run and path: Random's step is the teacher on k + the student's forward/backward on k + the
  optimizer, the forward (bench's P2 micro-benchmark, (a)) is UNIX's scoring. The excess is what selection
  (uncertainty, sort, mix) adds on its own.
* P1b (convnext_base -> resnet18): UNIX/KD step time <= UNIX/KD measured-FLOP ratio + 0.03 (bench's P1).
* P2: fused UNIX select <= 1.05 x the bare student forward (bench's P2), both pairs.
* P5: the convnext_base -> resnet18 KD step (synthetic, fused path): FLOPs per step / median step time >= 40%
  of the measured bf16 matmul peak (`peak` above; the datasheet's 989 TFLOP/s beside it).
* Teacher modes: the fastest of eager / graph / compile per pair (the `teacher_compile_*` bench, else the
  main one); compile_student: the small pair's KD and UNIX fused step with `train.compile_student=default`
  against the main bench's (two processes: a cross-run comparison, read it as such).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAIRS = ("resnet18_shufflenetv2", "convnext_base_resnet18")
P1A_MARGIN, P1B_MARGIN, P2_RATIO, P5_MFU = 0.02, 0.03, 1.05, 0.40
DATASHEET_PEAK = 989e12  # H100/H200 SXM dense bf16 (training/measure/timing.py PEAK_FLOPS)
FINGERPRINT_DIRS = ("pipeline", "selection", "training", "benchmarks", "tests", "configs")
FINGERPRINT_FILES = ("launch.py", "pyproject.toml", "setup.cfg")
FINGERPRINT_SUFFIXES = (".py", ".sh", ".yaml", ".toml", ".cfg")


def fingerprint(root: Path = REPO) -> str:
    """sha256 over the source files (path and content), the same with or without .git: the device machine gets
    a copy of the working tree that may have no repository, so this is how its results name the code. Compute
    it on a checkout of a commit here to match."""
    files = [root / f for f in FINGERPRINT_FILES if (root / f).is_file()]
    for d in FINGERPRINT_DIRS:
        for p in (root / d).rglob("*"):
            rel = p.relative_to(root).as_posix()
            source = p.is_file() and p.suffix in FINGERPRINT_SUFFIXES and "__pycache__" not in rel
            if source and not rel.startswith("benchmarks/results/"):
                files.append(p)
    h = hashlib.sha256()
    for p in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- env -----------------------------------------------------------------------------------------------------


def cmd_env(args) -> int:
    import subprocess

    import torch

    sys.path.insert(0, str(REPO))
    from unixkd.training.measure.timing import environment

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    env["fingerprint"] = fingerprint()
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count,
        }
    try:
        import pytest

        env["versions"]["pytest"] = pytest.__version__
    except ImportError:
        env["versions"]["pytest"] = None
    try:
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        env["nvidia_smi"] = f"not run: {e}"
    write_json(Path(args.path), env)
    v = env["versions"]
    print(
        f"env: {env['device']} | torch {v['torch']} (CUDA {v['cuda']}, cuDNN {env['cudnn']}) | torchvision "
        f"{v['torchvision']} | timm {v['timm']} | accelerate {v['accelerate']} | pytest {v['pytest']} | DALI "
        f"{v['dali']} | commit {env['git_commit']} | fingerprint {env['fingerprint']} | {env['nvidia_smi']}"
    )
    return 0


# ---- peak ----------------------------------------------------------------------------------------------------


def cmd_peak(args) -> int:
    """Dense bf16 matmuls of a few square sizes, CUDA events around each call, medians; the peak is the best size."""
    import statistics
    import time

    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sizes = [256, 512] if args.smoke or not cuda else [4096, 8192, 12288, 16384]
    reps, warmup = (5, 2) if args.smoke or not cuda else (30, 5)
    results = {}
    for n in sizes:
        g = torch.Generator(device=device).manual_seed(n)
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
        out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
        ms = []
        for i in range(warmup + reps):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                torch.matmul(a, b, out=out)
                end.record()
                if i >= warmup:
                    ms.append((start, end))
            else:
                t0 = time.perf_counter()
                torch.matmul(a, b, out=out)
                if i >= warmup:
                    ms.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            torch.cuda.synchronize()
            ms = [s.elapsed_time(e) for s, e in ms]
        med = statistics.median(ms)
        results[str(n)] = {"median_ms": med, "tflops": 2 * n**3 / (med / 1e3) / 1e12, "ms": ms}
        del a, b, out
    best = max(results, key=lambda n: results[n]["tflops"])
    peak = results[best]["tflops"] * 1e12
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    record = {
        "device": name,
        "dtype": "bfloat16",
        "what": "torch.matmul(a, b, out=c) of square bf16 n x n matrices, CUDA events around each call, "
        f"median of {reps} after {warmup}; peak = the best size's 2 n^3 / median time",
        "sizes": results,
        "best_n": int(best),
        "peak_flops_per_s": peak,
        "basis": f"bf16 matmul n={best} on {name} (benchmarks/gpu_session.py peak)",
        "datasheet_flops_per_s": DATASHEET_PEAK if cuda and ("H100" in name or "H200" in name) else None,
        "tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    write_json(Path(args.path), record)
    print(
        "peak: "
        + ", ".join(f"n={n}: {r['tflops']:.4g} TFLOP/s" for n, r in results.items())
        + f" -> {peak / 1e12:.4g} TFLOP/s ({name})"
    )
    return 0


# ---- jpegs ---------------------------------------------------------------------------------------------------


def _build_part(args: tuple) -> dict:
    import importlib.util

    out, classes, train, val, seed, size = args
    spec = importlib.util.spec_from_file_location("make_jpeg_folder", REPO / "benchmarks" / "make_jpeg_folder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build(
        Path(out), classes=classes, train_per_class=train, val_per_class=val, seed=seed, size=size, quality=90
    )


def cmd_jpegs(args) -> int:
    """The ImageNet-like JPEG folder of benchmarks/make_jpeg_folder.py, one builder process per core (part i: its
    own classes, seed i), merged into one train/ and val/ (class folders p<part>_n<class>)."""
    import shutil
    from concurrent.futures import ProcessPoolExecutor

    out = Path(args.path)
    if out.exists():
        shutil.rmtree(out)
    parts = max(1, min(os.cpu_count() or 1, args.classes))
    per = [args.classes // parts + (i < args.classes % parts) for i in range(parts)]
    jobs = [
        (str(out / "parts" / str(i)), n, args.train_per_class, args.val_per_class, i, args.size)
        for i, n in enumerate(per)
    ]
    with ProcessPoolExecutor(parts) as pool:
        manifests = list(pool.map(_build_part, jobs))
    for i in range(parts):
        for split in ("train", "val"):
            (out / split).mkdir(parents=True, exist_ok=True)
            for cls in sorted((out / "parts" / str(i) / split).iterdir()):
                cls.rename(out / split / f"p{i:02d}_{cls.name}")
    write_json(out / "parts" / "manifests.json", manifests)
    n = sum(1 for _ in (out / "train").rglob("*.JPEG"))
    print(f"jpegs: {n} train JPEGs, {args.classes} classes, {parts} parts, in {out}")
    return 0


# ---- summary -------------------------------------------------------------------------------------------------


def read_steps(work: Path) -> list[dict]:
    """WORK/steps.tsv: one line per step, written by gpu_session.sh's `step` (name rc seconds timeout status cmd)."""
    steps = []
    path = work / "steps.tsv"
    if not path.is_file():
        return steps
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 6:
            continue
        name, rc, seconds, timeout, status, command = parts[:6]
        steps.append(
            {
                "name": name,
                "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                "seconds": int(seconds) if seconds.isdigit() else None,
                "timeout_s": int(timeout) if timeout.isdigit() else None,
                "status": status,
                "command": command,
            }
        )
    return steps


def _row(bench: dict | None, selector: str, path: str = "fused", mode: str = "synthetic") -> dict | None:
    if not bench:
        return None
    return next(
        (r for r in bench["rows"] if (r["mode"], r.get("selector"), r.get("fast_path")) == (mode, selector, path)),
        None,
    )


def p1a(bench: dict | None) -> dict | None:
    if not bench:
        return None
    fwd = ((bench.get("p2") or {}).get("median_ms") or {}).get("student_forward")
    out = {
        "what": "UNIX/KD step <= (Random step + bare student forward on N) / KD step + 0.02, same bench run",
        "threshold": P1A_MARGIN,
    }
    for path in ("fused", "eager"):
        kd, rnd, unix = (_row(bench, s, path) for s in ("kd", "random", "unix"))
        if None in (kd, rnd, unix) or fwd is None:
            out[path] = None
            continue
        predicted = (rnd["median_step_ms"] + fwd) / kd["median_step_ms"]
        ratio = unix["median_step_ms"] / kd["median_step_ms"]
        out[path] = {
            "step_ratio_kd": ratio,
            "predicted": predicted,
            "margin": ratio - predicted,
            "pass": ratio - predicted <= P1A_MARGIN,
            "ms": {
                "kd": kd["median_step_ms"],
                "random": rnd["median_step_ms"],
                "unix": unix["median_step_ms"],
                "student_forward": fwd,
            },
        }
    return out


def p1b(bench: dict | None) -> dict | None:
    if not bench or not bench.get("targets"):
        return None
    p1 = bench["targets"]["P1"]
    return {
        "what": "UNIX/KD step <= UNIX/KD measured-FLOP ratio + 0.03",
        "threshold": P1B_MARGIN,
        **{path: p1.get(path) for path in ("fused", "eager")},
    }


def _timed_path(bench: dict | None) -> str:
    """fused where the run timed it; eager where it resolves to eager anyway (a CPU: the smoke mode)."""
    return "fused" if _row(bench, "kd", "fused") is not None else "eager"


def p5(bench: dict | None, peak: dict | None) -> dict | None:
    path = _timed_path(bench)
    kd = _row(bench, "kd", path)
    if kd is None:
        return None
    achieved = kd["flops_per_step"] / (kd["median_step_ms"] / 1e3)
    measured = (peak or {}).get("peak_flops_per_s")
    return {
        "what": "convnext_base -> resnet18 KD step (synthetic): FLOPs per step / median step time / peak",
        "path": path,
        "threshold": P5_MFU,
        "achieved_tflops": achieved / 1e12,
        "measured_peak_tflops": measured / 1e12 if measured else None,
        "mfu_measured_peak": achieved / measured if measured else None,
        "mfu_datasheet_peak": achieved / DATASHEET_PEAK,
        "bench_peak_basis": (bench.get("peak") or {}).get("basis"),
        "pass": (achieved / measured >= P5_MFU) if measured else None,
    }


def teacher_modes(main: dict | None, compiled: dict | None) -> dict | None:
    t = (compiled or {}).get("teacher_forward") or (main or {}).get("teacher_forward")
    if not t:
        return None
    return {k: t.get(k) for k in ("rows", "median_ms", "speedup_vs_eager", "fastest", "first_call_s", "errors")}


def compile_student(main: dict | None, compiled: dict | None) -> dict | None:
    if not main or not compiled:
        return None
    out = {}
    path = _timed_path(compiled)
    for s in ("kd", "unix"):
        a, b = _row(main, s, path), _row(compiled, s, path)
        if a and b:
            out[s] = {
                "eager_student_ms": a["median_step_ms"],
                "compiled_student_ms": b["median_step_ms"],
                "speedup": a["median_step_ms"] / b["median_step_ms"],
                "compiled_modes": b.get("modes"),
            }
    return out or None


def _fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def _verdict(p) -> str:
    return "-" if p is None else ("PASS" if p else "FAIL")


def junit(path: Path) -> dict | None:
    """Counts of a pytest JUnit XML, and the names of the tests that failed."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    bad = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"], "bad": bad}


def compute_targets(work: Path, out: Path, peak: dict | None) -> tuple[dict, dict]:
    bench = {pair: read_json(out / f"bench_{pair}.json") for pair in PAIRS}
    extras = work / "extras"
    t_compile = {pair: read_json(extras / f"bench_teacher_compile_{pair}.json") for pair in PAIRS}
    s_compile = read_json(extras / f"bench_compile_student_{PAIRS[0]}.json")
    profiles = {}
    for p in sorted(extras.glob("profile_*/profile.json")) if extras.is_dir() else []:
        r = read_json(p)
        if r:
            profiles[p.parent.name] = {
                "median_step_ms": r["median_step_ms"],
                "mfu": r.get("mfu"),
                "modes": r["fast_path"]["modes"],
                "phases_ms": {k: v["median_ms"] for k, v in r["phases"].items()},
                "time_share": {k: v["time_share"] for k, v in r["phases"].items()},
            }
    targets = {
        "P1a": p1a(bench[PAIRS[0]]),
        "P1b": p1b(bench[PAIRS[1]]),
        "P2": {pair: (b.get("targets") or {}).get("P2") if b else None for pair, b in bench.items()},
        "P5": p5(bench[PAIRS[1]], peak),
        "teacher_modes": {pair: teacher_modes(bench[pair], t_compile[pair]) for pair in PAIRS},
        "compile_student": compile_student(bench[PAIRS[0]], s_compile),
    }
    return targets, profiles


def dali_results(out: Path) -> dict:
    bench = read_json(out / f"bench_pipeline_{PAIRS[0]}.json")
    parity = {p.stem: read_json(p) for p in sorted(out.glob("preprocess_parity_*.json"))}
    loader = None
    if bench:
        loader = next((d for d in bench.get("data_alone", []) if d.get("ours")), None)
    return {
        "P3": (bench or {}).get("targets", {}).get("P3"),
        "P4": (bench or {}).get("targets", {}).get("P4"),
        "loader_alone_img_per_s": loader and loader["img_per_s"],
        "pipeline_rows": [
            {k: r.get(k) for k in ("mode", "runner", "img_per_s", "median_step_ms", "median_data_wait_ms")}
            for r in (bench or {}).get("rows", [])
        ],
        "parity": {name: (r or {}).get("total") for name, r in parity.items()},
    }


def summary(work: Path, out: Path, mode: str, part: str = "compute") -> dict:
    env, peak = read_json(work / "env.json"), read_json(work / "peak.json")
    record = {
        "kind": "unixkd gpu session",
        "mode": mode,
        "part": part,
        "env": env,
        "peak": peak,
        "steps": read_steps(work),
        "tests": {p.stem: junit(p) for p in sorted(out.glob("*.xml"))},
    }
    if part == "dali":
        record["dali"] = dali_results(out)
    else:
        record["targets"], record["profiles"] = compute_targets(work, out, peak)
    record["files"] = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
    write_json(out / "session.json", record)
    (out / "summary.tmp").write_text(format_summary(record) + "\n")
    os.replace(out / "summary.tmp", out / "summary.txt")
    return record


def format_summary(r: dict) -> str:
    lines = [f"unixkd GPU session ({r['mode']}, {r['part']} part)"]
    env = r.get("env")
    if env:
        v = env["versions"]
        lines.append(
            f"device {env['device']} | torch {v['torch']} CUDA {v['cuda']} | timm {v['timm']} | DALI {v['dali']} | "
            f"commit {env['git_commit']} | fingerprint {env['fingerprint']} | {env['time_utc']}"
        )
    peak = r.get("peak")
    if peak:
        lines.append(f"measured peak: {peak['peak_flops_per_s'] / 1e12:.4g} TFLOP/s ({peak['basis']})")
    lines.append("steps:")
    for s in r["steps"]:
        lines.append(
            f"  {s['name']:<28} {s['status']:<8} rc={s['rc']!s:<4} {s['seconds']!s:>4} s (limit {s['timeout_s']} s)"
        )
    for name, t in r["tests"].items():
        if t:
            bad = f"; failed: {', '.join(t['bad'][:6])}" if t["bad"] else ""
            lines.append(
                f"{name}: {t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped{bad}"
            )
    if r["part"] == "dali":
        lines += format_dali(r["dali"])
    else:
        lines += format_targets(r)
    failed = [s["name"] for s in r["steps"] if s["status"] != "ok"]
    lines.append(f"files: {', '.join(r['files'])}")
    lines.append("result: " + ("every step ok" if not failed else f"NOT ok: {', '.join(failed)}"))
    return "\n".join(lines)


def format_dali(d: dict) -> list[str]:
    lines = ["DALI:"]
    for name, total in d["parity"].items():
        if total:
            lines.append(
                f"  {name}: {total['photos']} photos, mean |diff| {total['mean_abs']:.5f}, max {total['max_abs']:.4f}"
            )
    if d["loader_alone_img_per_s"]:
        lines.append(f"  loader alone: {d['loader_alone_img_per_s']:.0f} img/s")
    for row in d["pipeline_rows"]:
        wait = row["median_data_wait_ms"]
        lines.append(
            f"  {row['mode']:<9} {row['runner']:<14} {row['img_per_s']:8.0f} img/s  step {row['median_step_ms']:.2f} ms"
            + (f"  wait {wait:.2f} ms" if wait is not None else "")
        )
    p3 = (d["P3"] or {}).get("runners") or {}
    for runner, x in p3.items():
        lines.append(f"  P3  {runner}: {x['ratio']:.3f} (>= 0.95) {_verdict(x['pass'])}")
    p4 = d["P4"] or {}
    for path in ("fused", "eager"):
        for sel, x in (p4.get(path) or {}).items():
            if isinstance(x, dict) and "ratio" in x:
                lines.append(f"  P4  {path} {sel}: {x['ratio']:.2f}x timm-kd {_verdict(x.get('pass'))}")
    return lines


def format_targets(r: dict) -> list[str]:
    t = r["targets"]
    lines = ["targets:"]
    a = t["P1a"] or {}
    for path in ("fused", "eager"):
        x = a.get(path)
        if x:
            lines.append(
                f"  P1a {path:<5} UNIX/KD {x['step_ratio_kd']:.3f} vs predicted {x['predicted']:.3f} "
                f"(margin {x['margin']:+.3f} <= {P1A_MARGIN}) {_verdict(x['pass'])}"
            )
        else:
            lines.append(f"  P1a {path:<5} -")
    b = t["P1b"] or {}
    for path in ("fused", "eager"):
        x = b.get(path)
        if x:
            lines.append(
                f"  P1b {path:<5} UNIX/KD {x['step_ratio_kd']:.3f} vs FLOPs {x['flop_ratio_measured']:.3f} "
                f"(margin {x['margin']:+.3f} <= {P1B_MARGIN}) {_verdict(x['pass'])}"
            )
        else:
            lines.append(f"  P1b {path:<5} -")
    for pair, p2 in t["P2"].items():
        fused = (p2 or {}).get("fused")
        eager = (p2 or {}).get("eager")
        lines.append(
            f"  P2  {pair}: fused {_fmt(fused and fused['ratio'])} {_verdict(fused and fused['pass'])}, "
            f"eager {_fmt(eager and eager['ratio'])} (<= {P2_RATIO})"
        )
    x = t["P5"]
    if x:
        lines.append(
            f"  P5  KD step {x['achieved_tflops']:.1f} TFLOP/s = {_fmt(x['mfu_measured_peak'], '.1%')} of the measured "
            f"peak {_fmt(x['measured_peak_tflops'], '.1f')} (>= {P5_MFU:.0%}) {_verdict(x['pass'])}; "
            f"{x['mfu_datasheet_peak']:.1%} of 989"
        )
    else:
        lines.append("  P5  -")
    for pair, tm in t["teacher_modes"].items():
        if tm:
            ms = ", ".join(f"{m} {v:.2f} ms" for m, v in (tm["median_ms"] or {}).items())
            err = f"; failed: {', '.join(tm['errors'])}" if tm.get("errors") else ""
            lines.append(f"  teacher {pair}: {ms}; fastest {tm['fastest']}{err}")
        else:
            lines.append(f"  teacher {pair}: -")
    cs = t["compile_student"]
    if cs:
        parts = [
            f"{s} {v['eager_student_ms']:.2f} -> {v['compiled_student_ms']:.2f} ms ({v['speedup']:.2f}x)"
            for s, v in cs.items()
        ]
        lines.append(f"  compile_student {PAIRS[0]}: " + "; ".join(parts))
    else:
        lines.append("  compile_student: -")
    for name, p in r["profiles"].items():
        shares = ", ".join(f"{k} {100 * (v or 0):.0f}%" for k, v in p["time_share"].items())
        lines.append(f"  {name}: step {p['median_step_ms']:.2f} ms; {shares}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env")
    p.add_argument("path")
    p = sub.add_parser("peak")
    p.add_argument("path")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU)")
    p = sub.add_parser("summary")
    p.add_argument("work")
    p.add_argument("out")
    p.add_argument("--mode", default="gpu")
    p.add_argument("--part", default="compute")
    p = sub.add_parser("jpegs")
    p.add_argument("path")
    p.add_argument("--classes", type=int, default=128)
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=1)
    p.add_argument("--size", type=int, default=500)
    sub.add_parser("fingerprint")
    args = parser.parse_args(argv)
    if args.cmd == "env":
        return cmd_env(args)
    if args.cmd == "peak":
        return cmd_peak(args)
    if args.cmd == "jpegs":
        return cmd_jpegs(args)
    if args.cmd == "summary":
        r = summary(Path(args.work), Path(args.out), args.mode, args.part)
        if os.environ.get("GPU_SESSION_PRINT"):
            print(format_summary(r))
        return 0
    print(fingerprint())
    return 0


if __name__ == "__main__":
    sys.exit(main())
