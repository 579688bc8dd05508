"""Real processes: two ranks over gloo, two "nodes" on loopback, SIGKILL at a random step then resume (bitwise),
SIGTERM save-and-exit (one rank signalled, both agree). CPU only; every run is a subprocess like a user's."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
STEPS, EVERY, K = 18, 3, 12  # long enough that a kill after checkpoint <= 9 lands well before the end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(nproc: int, *, machines: int = 1, rank: int = 0, port: int | None = None) -> list[str]:
    if nproc == 1 and machines == 1:
        return [sys.executable, str(REPO / "launch.py")]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(nproc),
        "--num_machines",
        str(machines),
        "--machine_rank",
        str(rank),
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port or free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def train_args(out: Path, digits_root: Path, teacher_ckpt: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        f"out_dir={out}",
        f"data.root={digits_root}",
        "data.batch_size=16",
        "data.num_threads=1",
        "model.teacher=test_resnet",
        f"model.teacher_checkpoint={teacher_ckpt}",
        "teacher_train.train_if_missing=false",
        f"selection.k={K}",
        f"train.max_steps={STEPS}",
        f"train.checkpoint_every={EVERY}",
        "train.keep_checkpoints=3",
        "train.log_every=1",
        "train.progress=false",
        "train.eval_every=0",
        *extra,
    ]


def start(nproc: int, args: list[str]) -> subprocess.Popen:
    script = launch_cmd(nproc)
    cmd = script + ([str(REPO / "launch.py")] if nproc > 1 else []) + args
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )  # its own process group, so a kill reaches every rank


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared:\n{proc.stdout.read()[-3000:]}"
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.02)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_same_sampling(a: Path, b: Path) -> None:
    """The sampling analytics of a resumed run equal the uninterrupted run's (counts carried in checkpoints)."""
    sa, sb = (json.loads((p / "sampling.json").read_text()) for p in (a, b))
    assert sa == sb


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_root, teacher_ckpt):
    """Uninterrupted runs, one per process count, that the interrupted ones must reproduce bit for bit."""
    cache = {}

    def get(nproc: int) -> Path:
        if nproc not in cache:
            out = tmp_path_factory.mktemp(f"reference{nproc}")
            finish(start(nproc, train_args(out, digits_root, teacher_ckpt)))
            cache[nproc] = out
        return cache[nproc]

    return get


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_at_a_random_step_then_resume_is_bitwise_equal(tmp_path, digits_root, teacher_ckpt, reference, nproc):
    ref = reference(nproc)
    rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["world_size"] == nproc and rows[-1]["val_images"] == 359  # val covered once across ranks
    assert rows[-1]["teacher_images"] == STEPS * K * nproc
    sampling = json.loads((ref / "sampling.json").read_text())
    assert sampling["epochs"] == [0] and sum(sampling["seen"][0]) == STEPS * 16 * nproc  # summed over ranks
    assert sum(sampling["selected"][0]) == STEPS * K * nproc

    kill_after = random.Random().choice(range(EVERY, 10, EVERY))
    proc = start(nproc, train_args(tmp_path, digits_root, teacher_ckpt))
    wait_for(tmp_path / "checkpoints" / f"step-{kill_after}", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # every rank, mid-step or mid-save: wherever they are
    proc.wait()
    assert not (tmp_path / "final").exists(), "the run finished before the kill; the test proved nothing"

    out = finish(start(nproc, train_args(tmp_path, digits_root, teacher_ckpt, "resume=auto")))
    assert "resumed from" in out
    assert_same_weights(ref, tmp_path)
    assert_same_sampling(ref, tmp_path)


def test_sigterm_saves_and_exits_cleanly_then_resumes_bitwise(tmp_path, digits_root, teacher_ckpt, reference):
    proc = start(1, train_args(tmp_path, digits_root, teacher_ckpt))
    wait_for(tmp_path / "checkpoints" / "step-6", proc)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    assert "preempted by SIGTERM at step" in out and "resume=auto" in out
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["preempted"] and 6 <= last["step"] < STEPS
    assert Path(last["checkpoint"]).name == f"step-{last['step']}"

    finish(start(1, train_args(tmp_path, digits_root, teacher_ckpt, "resume=auto")))
    assert_same_weights(reference(1), tmp_path)
    assert_same_sampling(reference(1), tmp_path)  # the preempted run wrote its part of epoch 0; merged on resume


def test_sigterm_to_one_rank_stops_both_at_the_same_step(tmp_path, digits_root, teacher_ckpt):
    proc = start(2, train_args(tmp_path, digits_root, teacher_ckpt, "train.preempt_check_every=2"))
    wait_for(tmp_path / "checkpoints" / "step-3", proc)
    workers = [
        int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    ]
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGTERM)  # only one rank hears it, as when a node gets the notice first
    out = finish(proc)
    assert "preempted by SIGTERM at step" in out  # the main rank knows which signal its peer got
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["preempted"] and last["step"] < STEPS
    ckpt = Path(last["checkpoint"])
    assert sorted(p.name for p in ckpt.glob("trainer_state_*.json")) == ["trainer_state_0.json", "trainer_state_1.json"]
    assert {json.loads(p.read_text())["step"] for p in ckpt.glob("trainer_state_*.json")} == {last["step"]}


def make_id_dataset(root: Path, n: int = 100) -> None:
    """n images whose colour encodes their id (red: id % 10, green: id // 10); class = id % 2."""
    for i in range(n):
        folder = root / ("train" if i < 80 else "val") / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 20), (20 + (i % 10) * 20, 20 + (i // 10) * 20, 128)).save(folder / f"{i}.jpg", quality=95)


def test_two_nodes_on_loopback_cover_the_epoch_exactly_once(tmp_path):
    make_id_dataset(tmp_path / "data")
    port = free_port()
    cmd = [str(REPO / "tests" / "mp_coverage.py"), str(tmp_path / "data"), str(tmp_path)]
    nodes = [
        subprocess.Popen(
            launch_cmd(2, machines=2, rank=r, port=port) + cmd,
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in (0, 1)
    ]
    for node in nodes:
        finish(node, timeout=120)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["train_batches"] == ranks[1]["train_batches"] == 5  # 80 images / 2 ranks / batch 8
    train0, train1 = ranks[0]["train"], ranks[1]["train"]
    assert len(train0) == len(train1) == 40 and not set(train0) & set(train1)
    assert sorted(train0 + train1) == list(range(80))  # 80 = 2 * 5 * 8: nothing dropped, each sample once
    assert sorted(ranks[0]["val"] + ranks[1]["val"]) == list(range(80, 100))


def workers_of(proc: subprocess.Popen, n: int, timeout: float = 60) -> list[int]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = [
            int(p)
            for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        ]
        if len(found) == n:
            return found
        time.sleep(0.1)
    raise AssertionError(f"expected {n} worker processes of {proc.pid}")


def test_sigterm_to_the_launcher_saves_and_status_says_preempted(tmp_path, digits_root, teacher_ckpt, reference):
    """`accelerate launch` itself exits 1 on SIGTERM (torch elastic re-raises the signal after forwarding it);
    the ranks save and exit 0, and status.json is what a SLURM script tests (examples/slurm/unixkd.sbatch)."""
    proc = start(2, train_args(tmp_path, digits_root, teacher_ckpt, "train.preempt_check_every=1"))
    wait_for(tmp_path / "checkpoints" / "step-3", proc)
    proc.send_signal(signal.SIGTERM)  # the launcher only, as `kill <pid of accelerate launch>` does
    out, _ = proc.communicate(timeout=240)
    assert "preempted by SIGTERM at step" in out, out[-3000:]
    ours = [f'{REPO / "launch.py"}"', f"{REPO / 'training'}/"]  # the launcher's own traceback is torch's
    assert not any(frame in out for frame in ours), out[-3000:]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "preempted" and Path(status["checkpoint"]).name == f"step-{status['step']}"
    check = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), "status", str(tmp_path)], capture_output=True, text=True
    )
    assert check.returncode == 0 and "preempted at step" in check.stdout
    finish(start(2, train_args(tmp_path, digits_root, teacher_ckpt, "resume=auto")))
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "finished"
    assert_same_weights(reference(2), tmp_path)


def test_ctrl_c_saves_like_sigterm_then_resumes_bitwise(tmp_path, digits_root, teacher_ckpt, reference):
    proc = start(1, train_args(tmp_path, digits_root, teacher_ckpt))
    wait_for(tmp_path / "checkpoints" / "step-3", proc)
    proc.send_signal(signal.SIGINT)
    out = finish(proc)
    assert "interrupted (SIGINT) at step" in out and "resume=auto" in out and "Traceback" not in out
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "preempted"
    finish(start(1, train_args(tmp_path, digits_root, teacher_ckpt, "resume=auto")))
    assert_same_weights(reference(1), tmp_path)  # interrupted and resumed = never interrupted


def test_a_second_ctrl_c_aborts_and_the_cli_says_so_in_one_line(monkeypatch, capsys):
    from unixkd import launch
    from unixkd.training.guards import PreemptionFlag

    with PreemptionFlag() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with PreemptionFlag(repeat_aborts=False) as flag:  # under a launcher, which forwards Ctrl-C once more
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.signal_name == "SIGINT"

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(launch.COMMANDS, "report", interrupted)
    assert launch.main(["report", "somewhere"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_stuck_rank_ends_the_job_within_the_step_timeout(tmp_path, digits_root, teacher_ckpt):
    """SIGSTOP one of two ranks: the other gives up after train.step_timeout_min, says so in one line, and the
    launcher ends the job (torch's default would wait 30 minutes)."""
    timeout_min = 0.25
    proc = start(
        2,
        train_args(tmp_path, digits_root, teacher_ckpt, f"train.step_timeout_min={timeout_min}", "train.max_steps=200"),
    )
    wait_for(tmp_path / "checkpoints" / "step-3", proc)
    stuck = workers_of(proc, 2)[-1]
    os.kill(stuck, signal.SIGSTOP)
    t0 = time.time()
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        for pid in [stuck]:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    waited = time.time() - t0
    assert proc.returncode != 0
    assert "another process did not answer within the collective timeout" in out, out[-3000:]
    assert waited < timeout_min * 60 + 90, waited  # the timeout, plus the launcher's 30 s grace and start-up
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "stopped" and status["checkpoint"]


def test_tl_steps_through_ddp_equal_the_two_forward_reference(tmp_path):
    """Two ranks, the student DDP-wrapped: a TL step (tlmixup with AT, tlcutmix_pick) is one DDP forward whose
    module runs once per view, and matches the authors' two-forward loop with DDP's buffer broadcast and gradient
    averaging written out by hand (tests/mp_views.py), on both ranks."""
    proc = subprocess.Popen(
        launch_cmd(2) + [str(REPO / "tests" / "mp_views.py"), str(tmp_path)],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    finish(proc, timeout=240)
    ranks = [json.loads((tmp_path / f"views_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for r in ranks:
        assert [(run["method"], run["num_batches_tracked"]) for run in r["runs"]] == [
            ("tlmixup", 6),
            ("tlcutmix_pick", 9),
        ]
    assert ranks[0]["runs"][0]["loss"] != ranks[1]["runs"][0]["loss"]  # each rank trained on its own batches


def test_a_refusal_on_two_ranks_is_one_line_from_the_main_process(tmp_path, digits_root, teacher_ckpt):
    """The main process checks out_dir; the other rank gets its verdict instead of waiting at a collective,
    and the line is printed once, not once per rank."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')  # another run's record
    proc = start(2, train_args(tmp_path, digits_root, teacher_ckpt))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0
    assert out.count("error: out_dir=") == 1, out[-3000:]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
