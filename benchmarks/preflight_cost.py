"""Cost per file of the pre-flight, head-only (main's check before the tail was read) vs head + tail (today's).

    python benchmarks/preflight_cost.py <folder> [--rounds 15]

One thread, warm page cache, both checks interleaved round by round; prints CPU and wall microseconds per file
(min and median over rounds: on a shared machine the CPU time is the steadier number). ``header_problem`` is
the head-only check (stat, open, read 8 bytes); ``preflight_problem`` adds the seek to the last KiB and the
end-marker search (files of up to 2 KiB are read whole, in one read).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unixkd.pipeline.folder import IMAGE_EXTENSIONS  # noqa: E402
from unixkd.pipeline.scan import header_problem, preflight_problem  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    files = sorted(str(p) for p in Path(args.folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    bad = [f for f in files if preflight_problem(f) is not None]  # also warms the page cache
    checks = {"head only": header_problem, "head + tail": preflight_problem}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in checks}
    for _ in range(args.rounds):
        for name, check in checks.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for f in files:
                check(f)
            times[name].append(
                ((time.process_time() - cpu) / len(files) * 1e6, (time.perf_counter() - wall) / len(files) * 1e6)
            )
    print(f"{args.folder}: {len(files)} files ({len(bad)} flagged), {args.rounds} rounds, one thread")
    for name, runs in times.items():
        cpu, wall = [c for c, _ in runs], [w for _, w in runs]
        print(
            f"  {name:12s} cpu {min(cpu):6.1f} min {statistics.median(cpu):6.1f} median us/file   "
            f"wall {min(wall):6.1f} min {statistics.median(wall):6.1f} median us/file"
        )


if __name__ == "__main__":
    main()
