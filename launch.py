"""unixkd's one entry point.

    python launch.py train   --config configs/demo.yaml [key=value ...]
    python launch.py compare --config configs/demo.yaml --methods kd,random,unix [--seeds 0,1,2] [key=value ...]
    python launch.py eval    --config configs/demo.yaml checkpoint=runs/demo/unix/final/model.safetensors
    python launch.py scan    /data/imagenet [--write-clean-list clean.txt] [--dali]
    python launch.py cost    --teacher tv/resnet18 --student tv/shufflenet_v2_x0_5 --batch-size 256 --k 192 [--measure-time]
    python launch.py bench   --config configs/demo.yaml --selectors kd,random,unix --data both [--peer timm]
                             [--fast-path fused|eager|both] [--teacher-modes auto|none|eager,graph,compile]
    python launch.py profile --config configs/demo.yaml --selector unix [--fast-path fused|eager]
                             [--data pipeline|synthetic] --out runs/profile
    python launch.py report  runs/demo      (PNGs of a finished run: sampling heatmap, selected vs accuracy, curves)
    python launch.py status  runs/demo      (how the run ended; exit 0 if finished or preempted with a checkpoint)
    accelerate launch [--multi_gpu --num_processes 8 ...] launch.py train --config configs/imagenet/... data.root=...

Exit codes: 0 done (or preempted / interrupted with a checkpoint: resume=auto continues); 2 a mistake in the
command line, the config or the data, one line on stderr (UNIXKD_DEBUG=1 shows the traceback); 3 the run
stopped itself (NaN, a checkpoint it cannot write, a peer process that hangs), its last checkpoint intact;
130 aborted by a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ensure_package() -> None:
    """Make `import unixkd` work: `pip install -e .` installs this folder as the package `unixkd`; in a checkout that
    was never installed (a copied working tree), register the folder under that name for this process."""
    import importlib.util

    if "unixkd" in sys.modules or importlib.util.find_spec("unixkd") is not None:
        return
    spec = importlib.util.spec_from_file_location(
        "unixkd", HERE / "__init__.py", submodule_search_locations=[str(HERE)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["unixkd"] = module
    spec.loader.exec_module(module)


def main(argv: list[str] | None = None) -> int:
    ensure_package()
    prog = "unixkd" if Path(sys.argv[0]).name == "unixkd" else "launch.py"  # the console command or the script
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in [
        ("train", "train one run (distillation, or plain CE with selection.method=none)"),
        ("compare", "distil the same student with several methods and print one table"),
        ("eval", "evaluate a student checkpoint on the val split"),
    ]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", required=True, help="YAML file in configs/")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. selection.k=0.75")
        if name == "compare":
            p.add_argument("--methods", default="kd,random,unix", help="comma-separated selection.method values")
            p.add_argument(
                "--seeds",
                help="comma-separated seeds (0,1,2): every method with every seed, mean ± std per method; "
                "an interrupted compare run again reuses the runs it finished",
            )
    p = sub.add_parser("scan", help="decode every image of a dataset folder once; report the broken ones")
    p.add_argument("path", help="dataset root (with train/ and val/ class folders)")
    p.add_argument("--write-clean-list", metavar="FILE", help="write the good images' paths (for data.file_list)")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    p.add_argument(
        "--dali",
        action="store_true",
        help="decode the files PIL reads once more with DALI's CPU decoder (finds the files DALI rejects "
        "or crashes on; ~1.5x the time)",
    )
    p = sub.add_parser("report", help="draw a finished run's figures into <out_dir>/report/")
    p.add_argument("out_dir", help="the run folder (holds metrics.jsonl and sampling.json)")
    p = sub.add_parser("status", help="how a run ended: exit 0 if it finished or was preempted with a checkpoint")
    p.add_argument("out_dir", help="the run folder (holds status.json)")
    p.add_argument("--job", help="also require that this SLURM job wrote it (e.g. $SLURM_JOB_ID)")
    add_measure_commands(sub)
    args = parser.parse_args(argv)

    from unixkd.training.errors import USER_ERRORS
    from unixkd.training.guards import RunStopped

    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as e:  # the user's input: one line, exit 2. Anything else is our bug: its traceback shows
        if os.environ.get("UNIXKD_DEBUG"):
            raise
        _error(e)
        return 2
    except RunStopped as e:  # NaN, a checkpoint that cannot be written, a peer that hangs: last checkpoint intact
        _error(e)
        return 3
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print("interrupted", file=sys.stderr)
        return 130


def cmd_train(args) -> int:
    from unixkd.training.config import load_config
    from unixkd.training.recipes import ensure_teacher
    from unixkd.training.trainer import train

    cfg = load_config(args.config, args.overrides)
    t0 = time.perf_counter()
    teacher_run = ensure_teacher(cfg)
    summary = train(cfg)
    if summary.get("preempted"):
        if _is_main():
            what = "interrupted (SIGINT)" if summary["signal"] == "SIGINT" else f"preempted by {summary['signal']}"
            print(
                f"{what} at step {summary['step']}: checkpoint {summary['checkpoint']}; "
                f"resume with the same command plus resume=auto"
            )
        return 0
    if _is_main():
        wall = time.perf_counter() - t0
        if teacher_run is not None:
            print(f"teacher ({cfg.model.teacher}) trained here: top-1 {teacher_run['top1']:.2f}%")
        if "teacher_top1" in summary:
            print(f"teacher {cfg.model.teacher}: top-1 {summary['teacher_top1']:.2f}%")
        print(
            f"student {cfg.model.student} ({cfg.selection.method}): top-1 {summary['top1']:.2f}%  "
            f"top-5 {summary['top5']:.2f}%"
        )
        print(
            f"cost: {summary['cost_fraction']:.4f} of conventional KD's FLOPs on the same {summary['step']} "
            f"steps (B_s = F_s; {summary['cost_fraction_measured']:.4f} with the counted B_s; teacher saw "
            f"{summary['teacher_images']} images)  wall-clock {wall:.1f} s"
        )
        print(f"outputs: {cfg.out_dir}/metrics.jsonl, {cfg.out_dir}/final/")
    return 0


def cmd_compare(args) -> int:
    from unixkd.training.compare import format_runs_table, format_seeds_table, run_compare, write_result
    from unixkd.training.config import ConfigError, load_config

    cfg = load_config(args.config, args.overrides)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from unixkd.selection import SELECTORS

    bad = [m for m in methods if m not in SELECTORS]  # the methods that distil ("none" is plain CE)
    if not methods or bad:
        raise ConfigError(f"--methods: unknown method(s) {bad or methods}; allowed: {', '.join(SELECTORS)}")
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds!r}: must be comma-separated integers, e.g. 0,1,2") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"--seeds {args.seeds!r}: give one or more different integers, e.g. 0,1,2")
    result = run_compare(cfg, methods, seeds)
    if _is_main():
        if result["runs"]:
            print(format_seeds_table(result) if seeds is not None else format_runs_table(result))
        for path in write_result(result, cfg.out_dir):
            print(f"wrote {path}")
        if not result["complete"]:
            s = result["stopped"]
            print(
                f"compare stopped: {s['method']} seed {s['seed']} was {s['signal'] or 'stopped'} at step {s['step']}; "
                "run the same command again to continue (finished runs are reused)"
            )
    return 0


def cmd_eval(args) -> int:
    from unixkd.training.config import ConfigError, load_config
    from unixkd.training.data import build_data
    from unixkd.training.distributed import make_accelerator
    from unixkd.training.evaluate import evaluate
    from unixkd.training.models import create_model

    overrides = [o for o in args.overrides if not o.startswith("checkpoint=")]
    ckpts = [o.split("=", 1)[1] for o in args.overrides if o.startswith("checkpoint=")]
    if len(ckpts) != 1 or not ckpts[0]:
        raise ConfigError(
            "eval needs exactly one checkpoint=<the student's weights: a file, or a folder such as runs/demo/final>"
        )
    cfg = load_config(args.config, overrides)
    accelerator = make_accelerator(cfg)
    data = build_data(cfg, accelerator)
    model = create_model(
        cfg.model.student,
        cfg.model.num_classes or len(data.classes),
        checkpoint=ckpts[0],
        trust=cfg.model.trust_checkpoint,
        log=accelerator.print,
    )  # EMA weights if the file has them
    model = accelerator.prepare_model(model, evaluation_mode=True)
    result = evaluate(model, data.val, accelerator)
    if _is_main():
        print(json.dumps({"checkpoint": ckpts[0], "model": cfg.model.student, **result}))
    return 0


def cmd_scan(args) -> int:
    """Exit 0 if the folder is clean, 1 if it has bad files or class-folder problems (report on stdout), 128 + the
    signal when interrupted (130: Ctrl-C, 143: SIGTERM; one line on stderr, no clean list written)."""
    import signal

    from unixkd.pipeline import ScanInterrupted

    received = {"signal": signal.SIGINT}

    def on_sigterm(signum, frame):  # a batch system's kill: the same clean stop as Ctrl-C
        received["signal"] = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return _scan(args)
    except (KeyboardInterrupt, ScanInterrupted) as e:
        progress = f" after {e.done} of {e.total} images" if isinstance(e, ScanInterrupted) else ""
        written = "" if args.write_clean_list is None else f"; {args.write_clean_list} not written"
        print(f"scan: interrupted by {signal.Signals(received['signal']).name}{progress}{written}", file=sys.stderr)
        return 128 + received["signal"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def _scan(args) -> int:
    from unixkd.pipeline import scan_tree
    from unixkd.training.files import atomic_write_text, check_writable_file

    if args.write_clean_list is not None:  # before the decode pass, which takes hours on ImageNet
        check_writable_file(args.write_clean_list, "--write-clean-list")
    report = scan_tree(args.path, workers=args.workers, dali=args.dali)
    for bad in report.bad:
        print(f"bad    {bad.path}: {bad.problem}")
    for cls in report.empty_classes:
        print(f"empty  {cls}/ (no images)")
    if report.class_mismatch:
        print(f"classes {report.class_mismatch}")
    for path in report.ignored:
        print(f"ignored {path} (not an image file; the loader skips it)")
    print(
        f"scanned {len(report.good) + len(report.bad)} images under {report.root}: {len(report.good)} good, "
        f"{len(report.bad)} bad, {len(report.empty_classes)} empty class folder(s), "
        f"{'train/val class mismatch, ' if report.class_mismatch else ''}{len(report.ignored)} ignored"
    )
    if not report.layout_ok:
        print(
            "layout: training refuses this folder until its class folders are fixed (add images to or remove the "
            "empty ones; give train/ and val/ the same classes): a clean list or data.skip_bad_files cannot "
            "change the classes"
        )
    if args.write_clean_list:
        atomic_write_text(args.write_clean_list, "".join(path + "\n" for path in report.good))
        print(
            f"clean list: {args.write_clean_list} ({len(report.good)} files; train with "
            f"data.root={report.root} data.file_list={args.write_clean_list})"
        )
    return 0 if report.clean else 1


def cmd_status(args) -> int:
    """Exit 0 when the run finished, or was preempted and saved a checkpoint (a SLURM script's test, since
    `accelerate launch` itself exits 1 on SIGTERM whatever its ranks did); 1 otherwise."""
    from unixkd.training.run_dir import lock_is_free, read_status

    info = read_status(Path(args.out_dir))
    state = info["state"]
    if state == "running" and lock_is_free(Path(args.out_dir)):
        state = "killed"  # no process holds the run's lock any more, yet it never said how it ended
    detail = f" at step {info['step']}" if info.get("step") is not None else ""
    detail += f": {info['message']}" if info.get("message") else ""
    detail += f" (checkpoint {info['checkpoint']})" if info.get("checkpoint") else ""
    print(f"{args.out_dir}: {state}{detail}")
    if args.job and info.get("slurm_job_id") != args.job:
        print(f"{args.out_dir}: status.json was written by job {info.get('slurm_job_id')}, not {args.job}")
        return 1
    return 0 if state == "finished" or (state == "preempted" and info.get("checkpoint")) else 1


def cmd_report(args) -> int:
    from unixkd.training.measure.report import draw_report

    for path in draw_report(args.out_dir):
        print(path)
    return 0


def add_measure_commands(sub) -> None:
    """`cost`, `bench`, `profile`: the cost model, throughput side by side, wall-clock vs FLOPs per phase."""
    p = sub.add_parser("cost", help="per-image FLOPs of a teacher/student pair and the cost of KD, Random, UNIX")
    p.add_argument("--teacher", help="timm name or tv/<torchvision name>")
    p.add_argument("--student", help="timm name or tv/<torchvision name>")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256, help="N")
    p.add_argument("--k", default="0.75", help="teacher images per step: a count (192), or a fraction of N (0.75)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--convention", default="paper", help="paper (B_s = F_s) or measured (counted B_s)")
    p.add_argument("--ft-over-fs", type=float, help="use this F_t/F_s instead of building models")
    p.add_argument("--bs-over-fs", type=float, help="with --ft-over-fs: B_s/F_s for --convention measured")
    p.add_argument("--budget", type=float, help="a fraction of KD's cost: print the k that meets it")
    p.add_argument(
        "--measure-time",
        action="store_true",
        help="also time the pair's step here (a short wall-clock calibration, random weights) and print the "
        "predicted wall-clock fraction beside the FLOP fraction",
    )
    p.add_argument("--time-steps", type=int, default=3, help="with --measure-time: timed steps per point")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    for name, help_ in [
        ("bench", "time each selector's training step side by side (img/s, step and FLOP ratios)"),
        ("profile", "time each phase of the step next to its FLOPs; writes profile.json/.png"),
    ]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", required=True, help="YAML file in configs/")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        p.add_argument("--steps", type=int, default=20, help="timed steps per selector")
        p.add_argument("--warmup", type=int, default=3, help="untimed steps per selector first")
        p.add_argument("--note", default="", help="free text stored in the result (e.g. 'shared machine')")
        if name == "bench":
            p.add_argument("--selectors", default="kd,random,unix", help="comma-separated selector names")
            p.add_argument("--data", default="synthetic", help="synthetic | pipeline | both")
            p.add_argument("--peer", help="timm: add timm's LogitDistillationTask on an ImageFolder DataLoader")
            p.add_argument(
                "--fast-path",
                default="fused",
                help="fused (the run as it resolves: CUDA graphs on a GPU) | eager | both, side by side",
            )
            p.add_argument(
                "--teacher-modes",
                default="auto",
                help="teacher-forward micro-benchmark: auto (eager,graph,compile on CUDA; eager on CPU), "
                "none, or a list of eager,graph,compile",
            )
            p.add_argument("--json", dest="json_path", help="write the result (every raw time) to this file")
        else:
            p.add_argument("--selector", help="selector to profile (default: the config's selection.method)")
            p.add_argument("--fast-path", default="fused", help="fused (the run as it resolves) | eager")
            p.add_argument("--data", default="pipeline", help="pipeline (the dataset, DALI) | synthetic (no DALI)")
            p.add_argument("--out", required=True, help="folder for profile.json and profile.png")


def cmd_cost(args) -> int:
    from unixkd.training.measure.cost_report import cost_report, format_cost

    report = cost_report(
        teacher=args.teacher,
        student=args.student,
        image_size=args.image_size,
        N=args.batch_size,
        k=args.k,
        num_classes=args.num_classes,
        convention=args.convention,
        ft_over_fs=args.ft_over_fs,
        bs_over_fs=args.bs_over_fs,
        budget=args.budget,
    )
    lines = []
    if args.measure_time:
        from unixkd.training.wallclock import format_time_pair, time_pair

        if args.ft_over_fs is not None:
            from unixkd.training.errors import UserError

            raise UserError("--measure-time times the models: give --teacher and --student, not --ft-over-fs")
        report["wallclock"] = time_pair(
            teacher=args.teacher,
            student=args.student,
            image_size=args.image_size,
            N=args.batch_size,
            k=report["k"],
            num_classes=args.num_classes,
            budget=args.budget,
            steps=args.time_steps,
        )
        lines = format_time_pair(report["wallclock"], report["ratio_unix"], report["ratio_random"])
    print(json.dumps(report) if args.json else "\n".join([format_cost(report), *lines]))
    return 0


def cmd_bench(args) -> int:
    from unixkd.training.errors import UserError
    from unixkd.training.files import atomic_write_json, check_writable_file, keep_previous
    from unixkd.training.measure.bench import bench, format_table
    from unixkd.training.measure.timing import load_timing_config

    cfg = load_timing_config(args.config, args.overrides, args.data)
    if args.json_path:  # before the timing, not after it
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file where a folder of the path goes
            raise UserError(f"--json {args.json_path}: a part of its folder path is a file") from None
        check_writable_file(args.json_path, "--json", example="bench.json")
    selectors = [s.strip() for s in args.selectors.split(",") if s.strip()]
    result = bench(
        cfg,
        selectors=selectors,
        steps=args.steps,
        warmup=args.warmup,
        data=args.data,
        peer=args.peer,
        fast_path=args.fast_path,
        teacher_modes=args.teacher_modes,
        note=args.note,
    )
    result["cli_args"] = vars(args)
    print(format_table(result))
    if args.json_path:
        kept = keep_previous(args.json_path)
        atomic_write_json(args.json_path, result, indent=1)
        print(f"wrote {args.json_path}" + (f" (the earlier result is now {kept})" if kept else ""))
    return 0


def cmd_profile(args) -> int:
    from unixkd.training.files import check_output_folder
    from unixkd.training.measure.profile import format_table, profile
    from unixkd.training.measure.timing import load_timing_config

    cfg = load_timing_config(args.config, args.overrides, args.data)
    check_output_folder(args.out, "--out")
    result = profile(
        cfg,
        selector=args.selector,
        steps=args.steps,
        warmup=args.warmup,
        out_dir=args.out,
        fast_path=args.fast_path,
        note=args.note,
        data=args.data,
    )
    print(format_table(result))
    png = Path(args.out) / "profile.png"
    print(f"wrote {args.out}/profile.json" + (f", {png}" if png.is_file() else ""))
    return 0


def _error(e: Exception) -> None:
    """One line on stderr; an error the main process found and handed to every rank is printed by it alone."""
    if not getattr(e, "relayed_from_main", False):
        print(f"error: {e}", file=sys.stderr)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


COMMANDS = {
    "train": cmd_train,
    "compare": cmd_compare,
    "eval": cmd_eval,
    "scan": cmd_scan,
    "report": cmd_report,
    "status": cmd_status,
    "cost": cmd_cost,
    "bench": cmd_bench,
    "profile": cmd_profile,
}

if __name__ == "__main__":
    sys.exit(main())
