"""launch.py: a mistake on the command line is one `error:` line on stderr and exit code 2, never a traceback.

Each case is a real subprocess (~3 s of imports); they all start at once, in one module fixture.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CASES = {
    # name: (arguments after launch.py, text stderr must contain)
    "k_out_of_range": (
        ["train", "--config", "configs/demo.yaml", "data.hflip=false", "selection.k=100"],
        "'selection.k'",
    ),
    "missing_config": (["train", "--config", "configs/no_such.yaml"], "configs/no_such.yaml"),
    "teacher_path": (
        ["train", "--config", "configs/demo.yaml", "model.teacher_checkpoint=/nonexistent/t.pth"],
        "'model.teacher_checkpoint'",
    ),
    "eval_no_checkpoint": (["eval", "--config", "configs/demo.yaml"], "checkpoint="),
    "compare_bogus": (["compare", "--config", "configs/demo.yaml", "--methods", "kd,bogus"], "bogus"),
    "bench_bogus": (["bench", "--config", "configs/demo.yaml", "--selectors", "kd,bogus"], "bogus"),
    "cost_no_models": (["cost", "--k", "48"], "--teacher"),
}


@pytest.fixture(scope="module")
def results():
    env = {k: v for k, v in os.environ.items() if k != "UNIXKD_DEBUG"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "launch.py", *args],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, (args, _) in CASES.items()
    }
    out = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # a case that did not fail fast started real work
            proc.kill()
            stdout, stderr = proc.communicate()
        out[name] = (proc.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_one_error_line_and_exit_code_2(results, name):
    rc, stdout, stderr = results[name]
    assert rc == 2, (rc, stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][len("error: ") :].strip(), stderr
    assert CASES[name][1] in lines[0], lines[0]


@pytest.mark.parametrize(
    "state, job, expected", [("preempted", "77", 0), ("finished", "77", 0), ("failed", "77", 1), ("preempted", "12", 1)]
)
def test_the_slurm_script_takes_its_exit_status_from_the_run(tmp_path, state, job, expected):
    """examples/slurm/unixkd.sbatch: `accelerate launch` exits 1 on SIGTERM whatever its ranks did; the script
    then asks `launch.py status` how this job's run ended. srun and scontrol are stand-ins here; the launcher
    'exits 1' after the ranks wrote status.json."""
    import json

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    info = {"state": state, "step": 9, "checkpoint": str(out / "checkpoints" / "step-9"), "slurm_job_id": job}
    (bin_dir / "srun").write_text(f"#!/bin/sh\nprintf '%s' '{json.dumps(info)}' > {out}/status.json\nexit 1\n")
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node0\n")
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "77",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NODELIST": "node0",
    }
    run = subprocess.run(
        ["bash", "examples/slurm/unixkd.sbatch", "configs/demo.yaml", f"out_dir={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == expected, run.stdout + run.stderr
    assert f"{out}: {state} at step 9" in run.stdout
    missing = subprocess.run(
        ["bash", "examples/slurm/unixkd.sbatch", "configs/demo.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "give out_dir=DIR" in missing.stderr


def test_the_unixkd_console_command_is_the_same_parser(tmp_path):
    """`pip install -e .` installs `unixkd` (setup.cfg console_scripts) beside the interpreter: the same commands
    and errors as launch.py, from any folder."""
    exe = Path(sys.executable).with_name("unixkd")
    if not exe.exists():
        pytest.skip("the project is not installed in this environment (pip install -e .)")
    help_ = subprocess.run([str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and help_.stdout.startswith("usage: unixkd")
    for command in ("train", "compare", "eval", "scan", "report", "status", "cost", "bench", "profile"):
        assert command in help_.stdout
    status = subprocess.run(
        [str(exe), "status", str(tmp_path / "nowhere")], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert status.returncode == 2 and status.stderr.count("\n") == 1 and status.stderr.startswith("error: ")


def test_the_install_claims_one_name_unixkd_and_leaves_training_pipeline_selection_launch_free(tmp_path):
    """Installed, the project is the package `unixkd` (setup.cfg's package_dir): from any folder its parts import by
    their full names, and the generic names another project may also use are not taken."""
    code = (
        "import importlib.metadata, importlib.util, json\n"
        "try:\n"
        "    installed = bool(importlib.metadata.distribution('unixkd').files)\n"
        "except importlib.metadata.PackageNotFoundError:\n"
        "    installed = False\n"
        "if installed:\n"
        "    import unixkd.launch, unixkd.training.trainer, unixkd.pipeline, unixkd.selection\n"
        "taken = [n for n in ('training', 'pipeline', 'selection', 'launch') if importlib.util.find_spec(n)]\n"
        "print(json.dumps({'installed': installed, 'taken': taken, 'at': unixkd.__path__[0] if installed else None}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    import json

    found = json.loads(out.stdout)
    if not found["installed"]:
        pytest.skip("the project is not installed in this environment (pip install -e .)")
    assert found["taken"] == [] and Path(found["at"]).resolve() == REPO


def test_only_user_errors_are_exit_2_our_own_bugs_keep_their_traceback(monkeypatch, capsys):
    """Exit 2 means "your input is wrong": a UserError (ConfigError, ModelError, DataError are kinds of it) is one
    line. A plain ValueError from inside a command is a broken invariant of ours, so it escapes with its traceback
    (the process exits 1) instead of being dressed up as the user's mistake."""
    from unixkd import launch
    from unixkd.pipeline.errors import DataError
    from unixkd.training.config import ConfigError
    from unixkd.training.errors import UserError

    for kind in (UserError, ConfigError, DataError):
        monkeypatch.setitem(launch.COMMANDS, "cost", lambda args, kind=kind: (_ for _ in ()).throw(kind("bad --k")))
        assert launch.main(["cost"]) == 2
        assert capsys.readouterr().err.strip() == "error: bad --k"

    def internal_bug(args):
        raise ValueError("shape mismatch inside the step")

    monkeypatch.setitem(launch.COMMANDS, "cost", internal_bug)
    with pytest.raises(ValueError, match="inside the step"):
        launch.main(["cost"])
