"""`bench`'s micro-benchmarks on its resident synthetic batch: the two things the fast path replays, each
beside its eager form, interleaved like the steps (A B C A B C ..., warm-up rounds first, medians; CUDA events
on a GPU, perf_counter on a CPU).

* selection (P2): (a) a bare no-grad student forward on the N images in the run's autocast, eager (the scoring
  forward alone: `score`, in the configured BatchNorm mode), (b) eager UNIX `select` (that forward +
  uncertainty, sort, partner gather, mix), (c) fused UNIX `select` (one CUDA graph replay; absent where the
  run does not graph it, e.g. on a CPU). P2 asks (c)/(a) <= 1.05: the selection adds next to nothing to the
  forward it needs anyway.
* teacher forward on the k rows (no grad, autocast): eager, CUDA graph, torch.compile, side by side, so
  "CUDA graph or torch.compile" is measured, not guessed. A mode that fails to build (inductor without a
  compiler, say) is recorded with its error instead of ending the run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor

from unixkd.selection import GraphedUnixSelector, resolve_k, score

from ..config import ConfigError
from ..fastpath import TeacherForward, eager_selector
from .timing import EventClock, median, mfu

TEACHER_MODES = ("eager", "graph", "compile")


def teacher_modes_for(spec: str, device: torch.device) -> list[str]:
    """--teacher-modes: auto (eager, graph, compile on CUDA; eager on a CPU, where compiling is slow and a
    graph impossible), none, or a comma-separated list."""
    if spec == "none":
        return []
    if spec == "auto":
        return list(TEACHER_MODES) if torch.device(device).type == "cuda" else ["eager"]
    modes = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in modes if m not in TEACHER_MODES]
    if not modes or bad:
        raise ConfigError(f"--teacher-modes {spec}: use auto, none or a list of {', '.join(TEACHER_MODES)}")
    if "graph" in modes and torch.device(device).type != "cuda":
        raise ConfigError(f"--teacher-modes {spec}: graph needs a CUDA device; this run is on {device}")
    return list(dict.fromkeys(modes))


def interleaved(calls: dict[str, Callable[[], object]], steps: int, warmup: int, device) -> dict[str, list[float]]:
    """Rounds of one call each (A B C A B C ...); the ms of each call after `warmup` rounds."""
    events = EventClock(device)
    regions: dict[str, list[int]] = {name: [] for name in calls}
    for i in range(warmup + steps):
        for name, call in calls.items():
            start = events.start()
            call()
            j = events.stop(start)
            if i >= warmup:
                regions[name].append(j)
    ms = events.ms()
    return {name: [ms[j] for j in js] for name, js in regions.items()}


def selection_micro(
    accelerator, scorer, images: Tensor, labels: Tensor, unix, ledger, peak: dict, *, steps: int, warmup: int
) -> dict:
    """P2 on the resident batch: (a) student forward, (b) eager UNIX select, (c) fused UNIX select.

    `unix`: the UNIX selector as the run builds it (graphed where the run graphs it); (b) is its eager twin,
    (c) a fresh copy of it (its own graph), left out where it is not graphed.
    """
    N = images.shape[0]
    eager = eager_selector(copy.deepcopy(unix))
    fused = copy.deepcopy(unix) if isinstance(unix, GraphedUnixSelector) else None

    def forward():
        with accelerator.autocast():
            score(scorer, images, eager.score_mode)

    def select(selector):
        def call():
            with accelerator.autocast():
                selector.select(images, labels, scorer)

        return call

    calls = {"student_forward": forward, "unix_eager": select(eager)}
    if fused is not None:
        calls["unix_fused"] = select(fused)
    for call in calls.values():  # first calls outside the timing, whatever --warmup says: the capture is here
        call()
    ms = interleaved(calls, steps, warmup, accelerator.device)
    med = {name: median(ms.get(name, [])) for name in ("student_forward", "unix_eager", "unix_fused")}
    forward_flops = N * ledger.Fs  # all three compute this (sort and mix count 0 FLOPs)

    def ratio(name):
        return med[name] / med["student_forward"] if med[name] is not None else None

    return {
        "what": "(a) bare no-grad student forward on N images, eager, in the run's autocast and BN mode; "
        "(b) eager UNIX select; (c) fused UNIX select (one CUDA graph replay). Same batch, interleaved",
        "N": N,
        "k": resolve_k(unix.k, N),
        "score_mode": eager.score_mode,
        "fused_mode": fused.mode if fused is not None else None,
        "median_ms": med,
        "mfu": {name: mfu(forward_flops, t, peak) for name, t in med.items()},
        "fused_over_forward": ratio("unix_fused"),
        "eager_over_forward": ratio("unix_eager"),
        "fused_fallbacks": fused.fallbacks if fused is not None else None,
        "ms": ms,
    }


def teacher_micro(
    accelerator, teacher, images: Tensor, k: int, modes: list[str], ledger, peak: dict, *, steps: int, warmup: int
) -> dict:
    """The teacher's no-grad forward on k resident rows in each of `modes`, side by side.

    The first call of each mode (a capture, a compilation) is timed apart as `first_call_s`.
    """
    device = accelerator.device
    rows = images[:k].clone()  # k rows in the loader's dtype and memory format, as the step hands them over
    calls, first_call_s, errors = {}, {}, {}
    for mode in modes:
        forward = teacher if mode == "eager" else TeacherForward(teacher, mode)

        def call(forward=forward):
            with torch.no_grad(), accelerator.autocast():
                forward(rows)

        t0 = time.perf_counter()
        try:
            call()
            if device.type == "cuda":
                torch.cuda.synchronize()  # sync: the first call's time includes what it queued
        except Exception as e:  # noqa: BLE001 -- a mode that cannot be built here is a finding, not a crash
            errors[mode] = f"{type(e).__name__}: {e}"[:600]
            continue
        first_call_s[mode] = time.perf_counter() - t0
        calls[mode] = call
    ms = interleaved(calls, steps, warmup, device) if calls else {}
    med = {mode: median(ms[mode]) for mode in calls}
    flops = k * ledger.Ft
    fastest = min(med, key=med.get) if med else None
    eager = med.get("eager")
    return {
        "what": f"teacher forward on k = {k} resident rows, no grad, in the run's autocast, per mode",
        "rows": k,
        "modes": modes,
        "median_ms": med,
        "speedup_vs_eager": {mode: eager / t for mode, t in med.items()} if eager else None,
        "fastest": fastest,
        "mfu": {mode: mfu(flops, t, peak) for mode, t in med.items()},
        "first_call_s": first_call_s,
        "errors": errors,
        "ms": ms,
    }


def format_micro(result: dict) -> list[str]:
    """The micro-benchmarks' lines under bench's table."""
    lines = []
    p2 = result.get("p2")
    if p2:
        med = p2["median_ms"]
        fused = (
            "-"
            if med["unix_fused"] is None
            else f"{med['unix_fused']:.2f} ms ({p2['fused_mode']}) = {p2['fused_over_forward']:.3f} x forward"
        )
        lines.append(
            f"selection (P2), N = {p2['N']}: student forward {med['student_forward']:.2f} ms | UNIX select "
            f"eager {med['unix_eager']:.2f} ms = {p2['eager_over_forward']:.3f} x forward | fused {fused}"
        )
    t = result.get("teacher_forward")
    if t:
        speedup = t["speedup_vs_eager"] or {}
        parts = [
            f"{mode} {ms:.2f} ms" + (f" ({speedup[mode]:.2f}x eager's speed)" if mode in speedup else "")
            for mode, ms in t["median_ms"].items()
        ]
        parts += [f"{mode} failed: {err.splitlines()[0][:80]}" for mode, err in t["errors"].items()]
        lines.append(
            f"teacher forward, {t['rows']} rows: "
            + " | ".join(parts)
            + (f"; fastest: {t['fastest']}" if t["fastest"] else "")
        )
    return lines
