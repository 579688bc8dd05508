"""Markdown tables from bench/profile result files, for benchmarks/README.md (never type the numbers by hand).

python training/measure/table.py benchmarks/results/*.json benchmarks/results/*/profile.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _header(r: dict, path: str) -> list[str]:
    env = r["environment"]
    v = env["versions"]
    return [
        f"**{path}** — {env['device']} ({env['cpu_count']} cores), torch {v['torch']}, DALI {v['dali']}, "
        f"timm {v['timm']}, commit `{(env['git_commit'] or '?')[:12]}`, {env['time_utc']}"
        + (f". Note: {r['note']}" if r.get("note") else ""),
        "",
    ]


def bench_table(r: dict, path: str) -> str:
    cfg = r["config"]
    fast = "modes" in r["rows"][0]  # files from before the fast path have no path, MFU or targets
    lines = _header(r, path)
    lines.append(
        f"{cfg['model']['teacher']} → {cfg['model']['student']}, N = {cfg['data']['batch_size']}, "
        f"{cfg['data']['image_size']} px, mixed precision {cfg['mixed_precision']}, "
        f"{r['args']['steps']} timed steps per row after {r['args']['warmup']} warm-up rounds"
        + (f"; MFU peak: {r['peak']['basis']}" if fast else "")
    )
    lines.append("")
    lines.append(
        "| mode | runner | " + ("selection / teacher | " if fast else "") + "img/s | median step ms "
        "| step / KD | FLOP / KD (paper) | FLOP / KD (measured) | teacher img/step | median data wait ms |"
        + (" MFU |" if fast else "")
    )
    lines.append("|---|---|" + ("---|" if fast else "") + "---:|" * 7 + ("---:|" if fast else ""))
    for row in r["rows"]:
        modes = row.get("modes")
        path_cell = ("–" if modes is None else f"{modes['selection']} / {modes['teacher']}") + " | " if fast else ""
        lines.append(
            f"| {row['mode']} | {row['runner']} | {path_cell}{row['img_per_s']:.0f} | "
            f"{row['median_step_ms']:.1f} | {_f(row['step_ratio_kd'], '.3f')} | "
            f"{row['flop_ratio_paper']:.3f} | {row['flop_ratio_measured']:.3f} | "
            f"{row['teacher_images_per_step']:.0f} | {_f(row['median_data_wait_ms'], '.1f')} |"
            + (f" {_f(row['mfu'], '.1%')} |" if fast else "")
        )
    for d in r["data_alone"]:
        lines.append(
            f"| pipeline | data alone: {d['loader']} | "
            + ("– | " if fast else "")
            + f"{d['img_per_s']:.0f} | {_f(d['median_batch_ms'], '.1f')} (per batch) |"
            + " |" * (6 if fast else 5)
        )
    if fast:
        lines += ["", *_micro_lines(r), *_targets_table(r["targets"])]
    return "\n".join(lines)


def _micro_lines(r: dict) -> list[str]:
    lines = []
    p2 = r.get("p2")
    if p2:
        med = p2["median_ms"]
        fused = (
            "not timed (nothing fused on this device)"
            if med["unix_fused"] is None
            else f"{med['unix_fused']:.2f} ms ({p2['fused_mode']}) = {p2['fused_over_forward']:.3f}× the forward"
        )
        lines.append(
            f"Selection on the resident batch (N = {p2['N']}, k = {p2['k']}): bare student forward "
            f"{med['student_forward']:.2f} ms; eager UNIX select {med['unix_eager']:.2f} ms = "
            f"{p2['eager_over_forward']:.3f}× the forward; fused UNIX select {fused}."
        )
    t = r.get("teacher_forward")
    if t:
        parts = [
            f"{mode} {ms:.2f} ms (MFU {_f(t['mfu'][mode], '.1%')}, first call {t['first_call_s'][mode]:.1f} s)"
            for mode, ms in t["median_ms"].items()
        ]
        parts += [f"{mode} failed ({err.splitlines()[0][:100]})" for mode, err in t["errors"].items()]
        lines.append(f"Teacher forward on {t['rows']} rows: " + "; ".join(parts) + f". Fastest: {t['fastest']}.")
    return [line for pair in zip(lines, [""] * len(lines)) for line in pair]


def _verdict(ok) -> str:
    return "pass" if ok else "**fail**"


def _cell(v, show) -> str:
    return "–" if v is None else show(v)


def _targets_table(t: dict) -> list[str]:
    p1, p2, p3, p4 = t["P1"], t["P2"], t["P3"], t["P4"]
    rows = [
        (
            "P1: UNIX/KD step time − UNIX/KD FLOPs (measured), synthetic",
            f"≤ +{p1['threshold']}",
            *(
                _cell(
                    p1[p],
                    lambda v: (
                        f"{v['margin']:+.3f} ({v['step_ratio_kd']:.3f} − {v['flop_ratio_measured']:.3f}) "
                        f"{_verdict(v['pass'])}"
                    ),
                )
                for p in ("fused", "eager")
            ),
        ),
        (
            "P2: UNIX select / bare student forward (N images)",
            f"≤ {p2['threshold']}",
            *(_cell(p2[p], lambda v: f"{v['ratio']:.3f} {_verdict(v['pass'])}") for p in ("fused", "eager")),
        ),
    ]
    if not p3["runners"]:
        rows.append(
            ("P3: pipeline img/s / min(loader alone, synthetic)", f"≥ {p3['threshold']}", "– (needs --data both)", "–")
        )
    for name, v in (p3["runners"] or {}).items():
        path = "eager" if name.endswith("/eager") else "fused"
        text = (
            f"{v['ratio']:.3f} ({v['pipeline_img_per_s']:.0f} / min({v['loader_alone_img_per_s']:.0f}, "
            f"{v['synthetic_img_per_s']:.0f})) {_verdict(v['pass'])}"
        )
        rows.append(
            (
                f"P3: {name}, pipeline img/s / min(loader alone, synthetic)",
                f"≥ {p3['threshold']}",
                text if path == "fused" else "",
                text if path == "eager" else "",
            )
        )
    for name, threshold in p4["thresholds"].items():
        rows.append(
            (
                f"P4: {name} pipeline img/s / timm-kd pipeline img/s",
                f"≥ {threshold}",
                *(
                    _cell((p4[p] or {}).get(name), lambda v: f"{v['ratio']:.2f} {_verdict(v['pass'])}")
                    for p in ("fused", "eager")
                ),
            )
        )
    lines = ["| target (from this run) | threshold | fused | eager |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines


def profile_table(r: dict, path: str) -> str:
    fast = "fast_path" in r  # files from before the fast path have no MFU
    lines = _header(r, path)
    modes = (
        (
            f"; selection {r['fast_path']['modes']['selection']}, teacher {r['fast_path']['modes']['teacher']}, "
            f"student {r['fast_path']['modes']['student']}; MFU peak: {r['peak']['basis']}"
        )
        if fast
        else ""
    )
    lines.append(
        f"{r['teacher']} → {r['student']}, selector {r['selector']}, N = {r['N']}, {r['image_size']} px, "
        f"mixed precision {r['mixed_precision']}; median step {r['median_step_ms']:.1f} ms, "
        f"{r['step_flops'] / 1e9:.3f} GFLOPs{modes}"
    )
    lines.append("")
    lines.append(
        "| phase | median ms | time share | GFLOPs | FLOP share | achieved TFLOP/s |" + (" MFU |" if fast else "")
    )
    lines.append("|---|---:|---:|---:|---:|---:|" + ("---:|" if fast else ""))
    for name, p in r["phases"].items():
        lines.append(
            f"| {name} | {p['median_ms']:.2f} | {100 * (p['time_share'] or 0):.1f}% | "
            f"{p['flops'] / 1e9:.3f} | {100 * (p['flop_share'] or 0):.1f}% | "
            f"{_f(p['achieved_tflops'], '.4f')} |" + (f" {_f(p['mfu'], '.1%')} |" if fast else "")
        )
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    for path in paths:
        r = json.loads(Path(path).read_text())
        print(bench_table(r, path) if r["kind"] == "unixkd bench" else profile_table(r, path))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
