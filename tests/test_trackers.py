"""Trackers through Accelerate (`train.log_with`): what TensorBoard's own EventAccumulator reads back equals
metrics.jsonl, row for row, after a plain run, a resume, a preemption and in `compare`; W&B offline writes under
out_dir and touches no network; only the main process logs; a tracker with its package missing or a misspelt
name is one line before any work; the trackers add no host read to the loop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml

from test_train_e2e import launch_config, read_rows, small_config
from unixkd import launch
from unixkd.training import trackers
from unixkd.training.config import ConfigError, load_config
from unixkd.training.distributed import make_accelerator
from unixkd.training.trainer import train

REPO = Path(__file__).resolve().parent.parent
STEPWISE = ("train.log_every=1", "train.checkpoint_every=2", "train.eval_every=0")


# --------------------------------------------------------------------------------------------------------
# readers: TensorBoard's own, and W&B's offline file


def board(out: Path, purge: bool = True):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(Path(out) / trackers.TRACKERS_DIR / "unixkd"), size_guidance={"scalars": 0}, purge_orphaned_data=purge
    )
    acc.Reload()
    return acc


def numeric_series(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What the trackers should hold: per metrics.jsonl field, (step, value) of each row that has it, in order."""
    series: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append((row["step"], value))
    return series


def assert_board_equals_metrics(out: Path) -> list[dict]:
    """Every numeric field of every metrics.jsonl row is a TensorBoard scalar at the row's step, with the row's
    value (TensorBoard keeps float32), in the same order, and nothing else is."""
    rows = read_rows(out)
    expected = numeric_series(rows)
    acc = board(out)
    assert sorted(acc.Tags()["scalars"]) == sorted(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert got == [(s, float(np.float32(v))) for s, v in points], tag
    return rows


def wandb_records(path: Path):
    """The records of an offline run file (`run-<id>.wandb`: a LevelDB-style log of W&B's Record protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_run(path: Path) -> dict:
    """One offline run: its id, config keys, history {step: {key: value}} and exit code."""
    run = {"history": {}, "config": {}, "exit": None, "id": None}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run["id"] = r.run.run_id
        elif kind == "config":
            run["config"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            run["history"][r.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
        elif kind == "exit":
            run["exit"] = r.exit.exit_code
    return run


def by_step(rows: list[dict]) -> dict[int, dict]:
    """metrics.jsonl rows merged per step, numbers only: what W&B keeps (logs at one step merge into one row)."""
    merged: dict[int, dict] = {}
    for row in rows:
        merged.setdefault(row["step"], {}).update(trackers._numbers(row))
    return merged


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """WANDB_MODE=offline, W&B's API pointed at a listening loopback socket that must see no connection, and its
    config/cache folders in tmp_path (nothing written to the home folder). Yields a function that says how many
    connections the socket received."""
    pytest.importorskip("wandb")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    home = tmp_path / "wandb-home"
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_BASE_URL": f"http://127.0.0.1:{server.getsockname()[1]}",
        "WANDB_CONFIG_DIR": home / "config",
        "WANDB_CACHE_DIR": home / "cache",
        "WANDB_DATA_DIR": home / "data",
        "WANDB_SILENT": "true",
    }.items():
        monkeypatch.setenv(key, str(value))
    for key in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)

    def connections() -> int:
        n = 0
        while True:
            try:
                conn, _ = server.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    yield connections
    server.close()


def file_list(tmp_path: Path, digits_root: Path, per_class: int = 7) -> Path:
    """A data.file_list of `per_class` train images per class and the whole val split: 2 steps per epoch at
    N = 32, so a 2-epoch run has an evaluation row (step 2) besides the final one (step 4)."""
    lines = []
    for cls in sorted((digits_root / "train").iterdir()):
        lines += [f"train/{cls.name}/{p.name}" for p in sorted(cls.glob("*.jpg"))[:per_class]]
    lines += [str(p.relative_to(digits_root)) for p in sorted((digits_root / "val").rglob("*.jpg"))]
    path = tmp_path / "files.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line(error: BaseException, *needles: str) -> str:
    message = str(error)
    assert message and "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# --------------------------------------------------------------------------------------------------------
# TensorBoard


@pytest.mark.slow
def test_tensorboard_reads_back_every_step_eval_and_final_row(tmp_path, digits_root, teacher_ckpt):
    """A 2-epoch run, one row per step: EventAccumulator gives each numeric field of metrics.jsonl (the step
    rows' loss, lr, img_per_s, cost fields; the evaluation's top1/top5; the final summary) at its step with its
    value; booleans and strings are not scalars; the hparams are the resolved config, flat."""
    cfg = small_config(
        tmp_path,
        digits_root,
        teacher_ckpt,
        "train.log_with=tensorboard",
        "train.log_every=1",
        f"data.file_list={file_list(tmp_path, digits_root)}",
        "train.epochs=2",
        "train.max_steps=0",
        "train.eval_every=1",
    )
    summary = train(cfg)
    out = Path(cfg.out_dir)
    rows = assert_board_equals_metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [(r["step"], "final" in r) for r in rows if "top1" in r] == [(2, False), (4, True)]  # eval, final
    acc = board(out)
    assert [e.step for e in acc.Scalars("top1")] == [2, 4]
    assert acc.Scalars("teacher_top1")[0].value == pytest.approx(summary["teacher_top1"], rel=1e-6)
    assert {"final", "checkpoint", "step"}.isdisjoint(acc.Tags()["scalars"])
    for tag in ("loss", "lr", "img_per_s", "cost_fraction", "teacher_images", "flops_paper", "top5", "Ft"):
        assert tag in acc.Tags()["scalars"], tag

    (saved,) = (out / "trackers" / "unixkd").glob("*/hparams.yml")  # Accelerate's copy of the hparams
    hparams = yaml.safe_load(saved.read_text())
    assert hparams["train.log_with"] == "tensorboard" and hparams["selection.k"] == 24
    assert hparams["data.crop_scale"] == "[0.5, 1.0]" and "selection.budget" not in hparams  # a list; a null
    assert all(isinstance(v, (int, float, str, bool)) for v in hparams.values())
    assert json.loads((out / "trackers" / "run.json").read_text())["id"]


@pytest.mark.slow
def test_resume_continues_the_tensorboard_run_without_the_redone_rows(tmp_path, digits_root, teacher_ckpt):
    """Rows logged after the checkpoint a run resumes from are hidden (TensorBoard's purge at that step), as
    metrics.jsonl drops them: read back, TensorBoard equals metrics.jsonl after (a) a kill after step 3 with the
    newest checkpoint at 2, and (b) a finished run resumed for more steps (its final row at the checkpoint's
    step is dropped). The run id stays; a new run in the folder is refused without touching trackers/; with
    overwrite=true the old trackers/ goes aside with the rest."""
    args = (*STEPWISE, "train.log_with=tensorboard")
    train(small_config(tmp_path, digits_root, teacher_ckpt, *args, "train.max_steps=3"))
    out = tmp_path / "run"
    run_id = json.loads((out / "trackers" / "run.json").read_text())["id"]
    shutil.rmtree(out / "checkpoints" / "step-3")  # as if killed after step 3's row, before its checkpoint

    train(small_config(tmp_path, digits_root, teacher_ckpt, *args, "train.max_steps=4", "resume=auto"))
    rows = assert_board_equals_metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    raw = [e.step for e in board(out, purge=False).Scalars("loss")]
    assert raw == [1, 2, 3, 2, 3, 4]  # without the purge: the killed run's step 3 too, beside the redone one

    train(small_config(tmp_path, digits_root, teacher_ckpt, *args, "train.max_steps=5", "resume=auto"))
    rows = assert_board_equals_metrics(out)
    assert [r["step"] for r in rows if "top1" in r] == [5]  # the final row of step 4 is gone from both
    assert json.loads((out / "trackers" / "run.json").read_text())["id"] == run_id

    before = {p: p.read_bytes() for p in (out / "trackers").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="holds another run"):
        train(small_config(tmp_path, digits_root, teacher_ckpt, *args, "train.max_steps=1"))
    assert {p: p.read_bytes() for p in (out / "trackers").rglob("*") if p.is_file()} == before
    train(small_config(tmp_path, digits_root, teacher_ckpt, *args, "train.max_steps=1", "overwrite=true"))
    (aside,) = tmp_path.glob("run.old-*")
    assert json.loads((aside / "trackers" / "run.json").read_text())["id"] == run_id
    assert json.loads((out / "trackers" / "run.json").read_text())["id"] != run_id
    assert assert_board_equals_metrics(out)[-1]["step"] == 1


@pytest.mark.slow
def test_a_preempted_run_ends_its_trackers_and_its_resume_continues_them(tmp_path, digits_root, teacher_ckpt):
    """SIGTERM during step 2: the run saves and returns `preempted`; its TensorBoard writer is closed (finish
    ran once) with every row up to the preempted summary in it; the resume continues the same record."""
    import accelerate.tracking

    import unixkd.training.step as step_module

    finished, calls = [], {"n": 0}
    real_finish, real_call = accelerate.tracking.TensorBoardTracker.finish, step_module.DistillStep.__call__

    def counted_finish(self):
        finished.append(self.logging_dir)
        return real_finish(self)

    def signalled(self, images, labels):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the flag is set; the step finishes, the run stops after it
        return real_call(self, images, labels)

    args = (*STEPWISE, "train.log_with=tensorboard", "train.max_steps=4")
    with (
        mock.patch.object(accelerate.tracking.TensorBoardTracker, "finish", counted_finish),
        mock.patch.object(step_module.DistillStep, "__call__", signalled),
    ):
        summary = train(small_config(tmp_path, digits_root, teacher_ckpt, *args))
    out = tmp_path / "run"
    assert summary["preempted"] and summary["step"] == 2
    assert finished == [str(out / "trackers" / "unixkd")]
    rows = assert_board_equals_metrics(out)
    assert rows[-1].get("preempted") and "preempted" not in board(out).Tags()["scalars"]

    train(small_config(tmp_path, digits_root, teacher_ckpt, *args, "resume=auto"))
    assert [r["step"] for r in assert_board_equals_metrics(out) if "loss" in r] == [1, 2, 3, 4]


@pytest.mark.slow
def test_compare_logs_each_method_to_its_own_out_dir(tmp_path, digits_root, teacher_ckpt):
    """Several runs in one process (compare; the demo's teacher run is the same case): each Accelerator holds
    its own trackers, so each method's TensorBoard run is in its own out_dir and equals its own metrics.jsonl."""
    from unixkd.training.compare import run_compare

    cfg = small_config(
        tmp_path,
        digits_root,
        teacher_ckpt,
        "train.log_with=tensorboard",
        "train.max_steps=2",
        "train.log_every=1",
        "train.eval_every=0",
    )
    rows = run_compare(cfg, ["kd", "random"])["runs"]
    for row in rows:
        out = tmp_path / "run" / row["method"]
        assert assert_board_equals_metrics(out)[-1]["teacher_images"] == row["teacher_images"]
    assert rows[0]["teacher_images"] != rows[1]["teacher_images"]
    assert not (tmp_path / "run" / "trackers").exists()


# --------------------------------------------------------------------------------------------------------
# W&B offline


@pytest.mark.slow
def test_wandb_offline_writes_under_out_dir_touches_no_network_and_resumes_the_same_run(
    tmp_path, digits_root, teacher_ckpt, wandb_offline
):
    """WANDB_MODE=offline: the offline run folder is <out_dir>/trackers/wandb/offline-run-*, its history is the
    metrics.jsonl rows (full precision), its config the flat resolved config; the resume is a second offline
    folder of the same run id holding the redone and later steps. W&B's API socket saw no connection."""
    args = (*STEPWISE, "train.log_with=wandb")
    train(small_config(tmp_path, digits_root, teacher_ckpt, *args, "train.max_steps=3"))
    out = tmp_path / "run"
    first_rows = read_rows(out)
    shutil.rmtree(out / "checkpoints" / "step-3")
    train(small_config(tmp_path, digits_root, teacher_ckpt, *args, "train.max_steps=4", "resume=auto"))

    run_id = json.loads((out / "trackers" / "run.json").read_text())["id"]
    files = sorted((out / "trackers" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2
    first, second = (wandb_run(f) for f in files)
    assert first["id"] == second["id"] == run_id and first["exit"] == second["exit"] == 0
    assert first["history"] == by_step(first_rows)
    assert second["history"] == {s: v for s, v in by_step(read_rows(out)).items() if s > 2}
    assert first["config"]["train.log_with"] == "wandb" and first["config"]["selection.k"] == 24
    assert wandb_offline() == 0
    logs = "".join(p.read_text(errors="replace") for p in (out / "trackers" / "wandb").rglob("*.log"))
    assert "connection refused" not in logs and os.environ["WANDB_BASE_URL"].split("//")[1] not in logs
    assert not (tmp_path / "wandb").exists() and not (REPO / "wandb").exists()  # nowhere else


@pytest.mark.slow
def test_a_failed_run_is_marked_failed_in_wandb_and_keeps_its_rows(
    tmp_path, digits_root, teacher_ckpt, wandb_offline, monkeypatch
):
    """A run that stops itself (NaN at step 2) ends its trackers: W&B's offline run exits with code 1 (failed)
    after the rows logged before; TensorBoard has the same rows as metrics.jsonl."""
    import unixkd.training.step as step_module
    from unixkd.training.guards import NonFiniteError

    real_loss, n = step_module.distill_loss, {"calls": 0}

    def poisoned(*a, **k):
        n["calls"] += 1
        return real_loss(*a, **k) * (float("nan") if n["calls"] == 2 else 1.0)

    monkeypatch.setattr(step_module, "distill_loss", poisoned)
    with pytest.raises(NonFiniteError):
        train(
            small_config(
                tmp_path, digits_root, teacher_ckpt, *STEPWISE, "train.max_steps=4", "train.log_with=tensorboard,wandb"
            )
        )
    out = tmp_path / "run"
    (file,) = (out / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    run = wandb_run(file)
    assert run["exit"] == 1 and run["history"] == by_step(read_rows(out)) and list(run["history"]) == [1]
    assert assert_board_equals_metrics(out)[-1]["step"] == 1
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
    assert wandb_offline() == 0


# --------------------------------------------------------------------------------------------------------
# two ranks: only the main process logs


@pytest.mark.slow
def test_two_ranks_log_once_from_the_main_process(tmp_path, digits_root, teacher_ckpt, wandb_offline):
    """`accelerate launch --num_processes 2` with TensorBoard and W&B: one TensorBoard event file (one process
    wrote it) equal to metrics.jsonl, one W&B offline run."""
    from test_distributed import finish, start, train_args

    finish(
        start(
            2, train_args(tmp_path, digits_root, teacher_ckpt, "train.max_steps=4", "train.log_with=tensorboard,wandb")
        )
    )
    rows = assert_board_equals_metrics(tmp_path)
    assert rows[-1]["world_size"] == 2
    assert len(list((tmp_path / "trackers" / "unixkd").glob("events.out.tfevents.*"))) == 1
    assert len(list((tmp_path / "trackers" / "wandb").glob("offline-run-*"))) == 1
    assert wandb_offline() == 0


# --------------------------------------------------------------------------------------------------------
# no host read added


@pytest.mark.slow
def test_trackers_add_no_host_read(tmp_path, digits_root, teacher_ckpt):
    """train() under the host-read detector of test_syncs, with and without TensorBoard: the same reads, at the
    same lines (the trackers get the Python numbers the log rows already hold)."""
    from test_syncs import HostReads

    found = {}
    for name in ("none", "tensorboard"):
        reads = HostReads()
        with reads:
            train(
                small_config(
                    tmp_path / name,
                    digits_root,
                    teacher_ckpt,
                    f"train.log_with={name}",
                    "train.max_steps=2",
                    "train.log_every=1",
                )
            )
        found[name] = sorted(reads.found)
    assert found["tensorboard"] == found["none"] and found["none"]
    assert (tmp_path / "tensorboard" / "run" / "trackers").is_dir()


# --------------------------------------------------------------------------------------------------------
# refusals, before any work


def test_a_missing_tracker_package_is_one_line_before_anything_is_made(
    tmp_path, digits_root, teacher_ckpt, monkeypatch, capsys
):
    """wandb not installed (hidden here): train() refuses in one line naming the key and the package before the
    Accelerator, the out_dir or the data exist; the CLI prints that line and exits 2. `all` with no tracker
    installed is refused the same way."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails, find_spec finds nothing
    cfg = small_config(tmp_path, digits_root, teacher_ckpt, "train.log_with=tensorboard,wandb")
    with mock.patch("unixkd.training.trainer.build_data") as build_data, pytest.raises(ConfigError) as info:
        train(cfg)
    one_line(info.value, "'train.log_with'", "wandb", "pip install wandb")
    assert not build_data.called and not Path(cfg.out_dir).exists()

    argv = [
        "train",
        "--config",
        str(launch_config()),
        f"out_dir={tmp_path / 'cli'}",
        f"data.root={digits_root}",
        "model.teacher=test_resnet",
        f"model.teacher_checkpoint={teacher_ckpt}",
        "train.log_with=wandb",
    ]
    assert launch.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install wandb" in err and not (tmp_path / "cli").exists()

    monkeypatch.setattr(trackers, "available", lambda name: False)
    with pytest.raises(ConfigError) as info:
        make_accelerator(small_config(tmp_path, digits_root, teacher_ckpt, "train.log_with=all"), run=True)
    one_line(info.value, "'train.log_with'=all", "no tracker package is installed")


@pytest.mark.parametrize("name, package", [("comet_ml", "comet-ml"), ("mlflow", "mlflow"), ("aim", "aim<4")])
def test_other_trackers_without_their_package_name_it(tmp_path, digits_root, teacher_ckpt, name, package):
    if trackers.available(name):
        pytest.skip(f"{name} is installed here")
    cfg = small_config(tmp_path, digits_root, teacher_ckpt, f"train.log_with={name}")
    with pytest.raises(ConfigError) as info:
        make_accelerator(cfg, run=True)
    one_line(info.value, "'train.log_with'", name, f"pip install {package}".replace("aim<4", "'aim<4'"))


@pytest.mark.parametrize(
    "value, needles",
    [
        ("tensorbord", ("unknown tracker 'tensorbord'", "did you mean 'tensorboard'", "wandb", "mlflow", "all")),
        ("tensorboard,wandb,csv", ("unknown tracker 'csv'", "comet_ml", "none")),
        ("[tensorboard,tensorboard]", ("names a tracker twice",)),
    ],
)
def test_an_unknown_tracker_name_is_one_line_listing_accelerates(value, needles):
    with pytest.raises(ConfigError) as info:
        load_config(str(launch_config()), [f"train.log_with={value}"])
    one_line(info.value, "'train.log_with'", *needles)


def test_log_with_forms_and_only_train_gets_trackers(tmp_path):
    """none / a name / comma-separated / a YAML list; make_accelerator gives trackers only with run=True, each
    Accelerator its own folder (several in one process keep theirs)."""
    pytest.importorskip("tensorboard")
    for value, names in (
        ("none", []),
        ("", []),
        ("false", []),
        ("off", []),
        ("TensorBoard", ["tensorboard"]),
        ("tensorboard, wandb", ["tensorboard", "wandb"]),
        ("[tensorboard]", ["tensorboard"]),
    ):
        assert trackers.parse(load_config(str(launch_config()), [f"train.log_with={value}"]).train.log_with) == names

    a = load_config(str(launch_config()), [f"out_dir={tmp_path / 'a'}", "train.log_with=tensorboard"])
    b = load_config(str(launch_config()), [f"out_dir={tmp_path / 'b'}", "train.log_with=tensorboard"])
    assert make_accelerator(a).log_with == []  # eval, bench, profile
    first, second = make_accelerator(a, run=True), make_accelerator(b, run=True)
    assert [str(t) for t in first.log_with] == [str(t) for t in second.log_with] == ["tensorboard"]
    assert first.logging_dir == str(tmp_path / "a" / "trackers")
    assert second.logging_dir == str(tmp_path / "b" / "trackers")
    assert not (tmp_path / "a").exists()  # nothing written before the run starts


def test_hparams_are_flat_scalars():
    cfg = load_config(str(launch_config()), ["train.log_with=[tensorboard,wandb]"])
    flat = trackers.hparams(cfg)
    assert flat["data.batch_size"] == 64 and flat["train.log_with"] == '["tensorboard", "wandb"]'
    assert flat["optim.milestones"] == "[30, 60]" and "selection.b" not in flat  # a list as JSON; None left out
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())
