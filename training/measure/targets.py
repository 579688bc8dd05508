"""The fast-path targets, computed from one `bench` result: every number from the same run, side by side.

* P1: UNIX step time / KD step time (synthetic) <= the measured-FLOP ratio + 0.03; per path (fused, eager).
* P2: fused scoring + selection <= 1.05 x a bare no-grad student forward on N images (bench_micro's `p2`).
* P3: end-to-end img/s with the loader >= 0.95 x min(loader alone, the same runner's compute-only img/s).
* P4: end-to-end KD img/s >= 2 x timm's KD task on the same loader-fed pair; UNIX >= 2.5 x; per path.

A target the run has no data for (no peer, one data mode, nothing fused on this device) is None, never a
guess. `pass` is a plain comparison with the threshold; on a CPU or a shared machine the verdicts only
show the plumbing works, the thresholds are for the H100.
"""

from __future__ import annotations

P1_MARGIN = 0.03
P2_RATIO = 1.05
P3_RATIO = 0.95
P4_RATIO = {"kd": 2.0, "unix": 2.5}
PATHS = ("fused", "eager")


def targets(result: dict) -> dict:
    rows = result["rows"]

    def row(mode: str, selector: str, path: str) -> dict | None:
        return next(
            (r for r in rows if (r["mode"], r.get("selector"), r.get("fast_path")) == (mode, selector, path)), None
        )

    return {"P1": _p1(row), "P2": _p2(result.get("p2")), "P3": _p3(rows, result["data_alone"]), "P4": _p4(row, rows)}


def _p1(row) -> dict:
    def one(path):
        unix, kd = row("synthetic", "unix", path), row("synthetic", "kd", path)
        if unix is None or kd is None:
            return None
        margin = unix["step_ratio_kd"] - unix["flop_ratio_measured"]
        return {
            "step_ratio_kd": unix["step_ratio_kd"],
            "flop_ratio_measured": unix["flop_ratio_measured"],
            "margin": margin,
            "pass": margin <= P1_MARGIN,
        }

    return {
        "what": "UNIX/KD step time minus UNIX/KD FLOPs (measured convention), synthetic batch",
        "threshold": P1_MARGIN,
        **{path: one(path) for path in PATHS},
    }


def _p2(p2: dict | None) -> dict:
    def one(ratio):
        return None if ratio is None else {"ratio": ratio, "pass": ratio <= P2_RATIO}

    return {
        "what": "UNIX select / bare no-grad student forward on N images",
        "threshold": P2_RATIO,
        "fused": one(p2["fused_over_forward"]) if p2 else None,
        "eager": one(p2["eager_over_forward"]) if p2 else None,
    }


def _p3(rows: list[dict], data_alone: list[dict]) -> dict:
    loader = next((d["img_per_s"] for d in data_alone if d.get("ours")), None)
    synthetic = {r["runner"]: r["img_per_s"] for r in rows if r["mode"] == "synthetic" and r.get("selector")}
    runners = {}
    for r in rows:
        if r["mode"] != "pipeline" or not r.get("selector") or loader is None or r["runner"] not in synthetic:
            continue
        bound = min(loader, synthetic[r["runner"]])  # the slower of the two parts the pipeline overlaps
        runners[r["runner"]] = {
            "pipeline_img_per_s": r["img_per_s"],
            "loader_alone_img_per_s": loader,
            "synthetic_img_per_s": synthetic[r["runner"]],
            "bound_img_per_s": bound,
            "ratio": r["img_per_s"] / bound,
            "pass": r["img_per_s"] / bound >= P3_RATIO,
        }
    return {
        "what": "pipeline img/s / min(this project's loader alone, the same runner's synthetic img/s)",
        "threshold": P3_RATIO,
        "runners": runners or None,
    }


def _p4(row, rows: list[dict]) -> dict:
    peer = next((r for r in rows if r["mode"] == "pipeline" and r.get("selector") is None), None)

    def one(path):
        out = {}
        for name, threshold in P4_RATIO.items():
            ours = row("pipeline", name, path)
            if ours is not None and peer is not None:
                ratio = ours["img_per_s"] / peer["img_per_s"]
                out[name] = {
                    "img_per_s": ours["img_per_s"],
                    "ratio": ratio,
                    "threshold": threshold,
                    "pass": ratio >= threshold,
                }
        return out or None

    return {
        "what": "pipeline img/s / timm-kd pipeline img/s (same pair, same JPEG folder)",
        "thresholds": P4_RATIO,
        "peer": peer["runner"] if peer else None,
        "peer_img_per_s": peer["img_per_s"] if peer else None,
        **{path: one(path) for path in PATHS},
    }


def format_targets(t: dict) -> list[str]:
    """The targets under bench's table, one line each; '-' = this run has no data for it."""

    def verdict(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    def paths(block, show) -> str:
        return "  ".join(f"{path}: " + ("-" if block[path] is None else show(block[path])) for path in PATHS)

    p1, p2, p3, p4 = t["P1"], t["P2"], t["P3"], t["P4"]
    lines = ["fast-path targets (from this run):"]
    lines.append(
        f"  P1 UNIX/KD step - FLOP ratio (synthetic) <= +{p1['threshold']}  "
        + paths(
            p1,
            lambda v: (
                f"{v['margin']:+.3f} ({v['step_ratio_kd']:.3f} - {v['flop_ratio_measured']:.3f}) {verdict(v['pass'])}"
            ),
        )
    )
    lines.append(
        f"  P2 UNIX select / student forward <= {p2['threshold']}          "
        + paths(p2, lambda v: f"{v['ratio']:.3f} {verdict(v['pass'])}")
    )
    if p3["runners"]:
        lines.append(
            f"  P3 pipeline / min(loader, synthetic) >= {p3['threshold']}      "
            + "  ".join(f"{name} {v['ratio']:.3f} {verdict(v['pass'])}" for name, v in p3["runners"].items())
        )
    else:
        lines.append(f"  P3 pipeline / min(loader, synthetic) >= {p3['threshold']}      - (needs --data both)")
    if p4["peer"] is None:
        lines.append("  P4 vs timm-kd (pipeline): KD >= 2x, UNIX >= 2.5x    - (needs --peer timm and pipeline data)")
    else:
        lines.append(
            "  P4 vs timm-kd (pipeline): KD >= 2x, UNIX >= 2.5x    "
            + paths(p4, lambda v: ", ".join(f"{name} {x['ratio']:.2f}x {verdict(x['pass'])}" for name, x in v.items()))
        )
    return lines
