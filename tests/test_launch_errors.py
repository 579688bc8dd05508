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
    "k_out_of_range": (["train", "--config", "configs/demo.yaml", "data.hflip=false", "selection.k=100"],
                       "'selection.k'"),
    "missing_config": (["train", "--config", "configs/no_such.yaml"], "configs/no_such.yaml"),
    "teacher_path": (["train", "--config", "configs/demo.yaml", "model.teacher_checkpoint=/nonexistent/t.pth"],
                     "'model.teacher_checkpoint'"),
    "eval_no_checkpoint": (["eval", "--config", "configs/demo.yaml"], "checkpoint="),
    "compare_bogus": (["compare", "--config", "configs/demo.yaml", "--methods", "kd,bogus"], "bogus"),
    "bench_bogus": (["bench", "--config", "configs/demo.yaml", "--selectors", "kd,bogus"], "bogus"),
    "cost_no_models": (["cost", "--k", "48"], "--teacher"),
}


@pytest.fixture(scope="module")
def results():
    env = {k: v for k, v in os.environ.items() if k != "UNIXKD_DEBUG"}
    procs = {name: subprocess.Popen([sys.executable, "launch.py", *args], cwd=REPO, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (args, _) in CASES.items()}
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
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][len("error: "):].strip(), stderr
    assert CASES[name][1] in lines[0], lines[0]
