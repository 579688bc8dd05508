"""Markdown tables from bench/profile result files, for benchmarks/README.md (never type the numbers by hand).

    python benchmarks/table.py benchmarks/results/*.json benchmarks/results/*/profile.json
"""

from __future__ import annotations

import json
import sys


def _f(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _header(r: dict, path: str) -> list[str]:
    env = r["environment"]
    v = env["versions"]
    return [f"**{path}** — {env['device']} ({env['cpu_count']} cores), torch {v['torch']}, DALI {v['dali']}, "
            f"timm {v['timm']}, commit `{(env['git_commit'] or '?')[:12]}`, {env['time_utc']}"
            + (f". Note: {r['note']}" if r.get("note") else ""), ""]


def bench_table(r: dict, path: str) -> str:
    cfg = r["config"]
    lines = _header(r, path)
    lines.append(f"{cfg['model']['teacher']} → {cfg['model']['student']}, N = {cfg['data']['batch_size']}, "
                 f"{cfg['data']['image_size']} px, mixed precision {cfg['mixed_precision']}, "
                 f"{r['args']['steps']} timed steps per row after {r['args']['warmup']} warm-up rounds")
    lines.append("")
    lines.append("| mode | runner | img/s | median step ms | step / KD | FLOP / KD (paper) | FLOP / KD (measured) "
                 "| teacher img/step | median data wait ms |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in r["rows"]:
        lines.append(f"| {row['mode']} | {row['runner']} | {row['img_per_s']:.0f} | {row['median_step_ms']:.1f} | "
                     f"{_f(row['step_ratio_kd'], '.3f')} | {row['flop_ratio_paper']:.3f} | "
                     f"{row['flop_ratio_measured']:.3f} | {row['teacher_images_per_step']:.0f} | "
                     f"{_f(row['median_data_wait_ms'], '.1f')} |")
    for d in r["data_alone"]:
        lines.append(f"| pipeline | data alone: {d['loader']} | {d['img_per_s']:.0f} | "
                     f"{_f(d['median_batch_ms'], '.1f')} (per batch) | | | | | |")
    return "\n".join(lines)


def profile_table(r: dict, path: str) -> str:
    lines = _header(r, path)
    lines.append(f"{r['teacher']} → {r['student']}, selector {r['selector']}, N = {r['N']}, {r['image_size']} px, "
                 f"mixed precision {r['mixed_precision']}; median step {r['median_step_ms']:.1f} ms, "
                 f"{r['step_flops'] / 1e9:.3f} GFLOPs")
    lines.append("")
    lines.append("| phase | median ms | time share | GFLOPs | FLOP share | achieved TFLOP/s |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name, p in r["phases"].items():
        lines.append(f"| {name} | {p['median_ms']:.2f} | {100 * (p['time_share'] or 0):.1f}% | "
                     f"{p['flops'] / 1e9:.3f} | {100 * (p['flop_share'] or 0):.1f}% | "
                     f"{_f(p['achieved_tflops'], '.4f')} |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    for path in paths:
        r = json.loads(open(path).read())
        print(bench_table(r, path) if r["kind"] == "unixkd bench" else profile_table(r, path))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
