"""The compute path without NVIDIA DALI: the GPU machine has none, so synthetic `bench` and `profile`,
`cost` and the fast-path tests must neither need nor import it; what reads image files still says, in one line,
what to install. Each test runs a fresh interpreter in which every `nvidia.dali` import fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# put before the code under test: records and refuses every import of nvidia.dali and its submodules
BLOCK = """
import importlib.abc, sys
sys.path.insert(0, {repo!r})

class NoDali(importlib.abc.MetaPathFinder):
    tried = []

    def find_spec(self, name, path=None, target=None):
        if name == "nvidia.dali" or name.startswith("nvidia.dali."):
            NoDali.tried.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by tests/test_no_dali.py)")
        return None

sys.meta_path.insert(0, NoDali())
"""


def run_without_dali(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(repo=str(REPO)) + code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_compute_modules_import_without_trying_dali():
    """`import unixkd.pipeline` and everything bench, profile, cost and the step import: not one attempt at DALI."""
    out = run_without_dali(
        "from unixkd import launch, pipeline, selection\n"
        "import unixkd.training.measure.bench, unixkd.training.measure.profile, unixkd.training.measure.cost_report\n"
        "import unixkd.training.trainer, unixkd.training.data, unixkd.training.measure.timing, unixkd.training.fastpath\n"
        "import unixkd.selection.graphed\n"
        "print('tried', NoDali.tried)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "tried []" in out.stdout, out.stdout


def test_the_gpu_tests_of_the_fast_path_collect_without_trying_dali():
    """What benchmarks/gpu_session.sh runs on the GPU machine (pytest -m gpu of these files) imports no DALI."""
    files = ["tests/test_fastpath.py", "tests/test_syncs.py", "tests/test_unix.py", "tests/test_bench_profile.py"]
    out = run_without_dali(
        "import pytest\n"
        f"code = pytest.main(['-q', '--collect-only', '-m', 'gpu', '-p', 'no:cacheprovider', *{files!r}])\n"
        "print('code', int(code), 'tried', NoDali.tried)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "code 0 tried []" in out.stdout and " collected" in out.stdout, out.stdout[-3000:]


@pytest.mark.slow
def test_synthetic_bench_profile_and_cost_run_without_dali(tmp_path, digits_root, teacher_ckpt):
    """Through launch.py as a user runs them: bench on the resident batch (the classes from the digits folder,
    no model.num_classes: the folder is listed, no loader built), profile --data synthetic, cost."""
    common = [
        "--steps",
        "1",
        "--warmup",
        "1",
        f"data.root={digits_root}",
        "model.teacher=test_resnet",
        f"model.teacher_checkpoint={teacher_ckpt}",
        "model.student=test_resnet",
        "data.batch_size=16",
        "selection.k=12",
        f"out_dir={tmp_path / 'run'}",
    ]
    bench = ["bench", "--config", "configs/demo.yaml", "--data", "synthetic", "--selectors", "kd,unix"]
    bench += ["--json", str(tmp_path / "bench.json"), *common]
    profile = ["profile", "--config", "configs/demo.yaml", "--data", "synthetic", "--selector", "unix"]
    profile += ["--out", str(tmp_path / "profile"), *common]
    cost = ["cost", "--teacher", "test_resnet", "--student", "test_resnet", "--image-size", "32", "--json"]
    out = run_without_dali(
        "from unixkd import launch\n"
        f"codes = [launch.main({bench!r}), launch.main({profile!r}), launch.main({cost!r})]\n"
        "print('codes', codes, 'tried', sorted(set(NoDali.tried)))\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "codes [0, 0, 0]" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    b = json.loads((tmp_path / "bench.json").read_text())
    assert [r["runner"] for r in b["rows"]] == ["kd", "unix"] and b["num_classes"] == 10
    assert b["environment"]["versions"]["dali"] is None  # the record says DALI was not there
    p = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert p["args"]["data"] == "synthetic" and p["phases"]["data_wait"]["flops"] == 0
    assert p["phases"]["scoring_forward"]["flops"] > 0


@pytest.mark.slow
def test_training_on_a_folder_without_dali_is_one_line_and_exit_2(tmp_path, digits_root, teacher_ckpt):
    """What does read image files still needs DALI, and says so in one line (DaliMissingError), exit code 2."""
    args = ["train", "--config", "configs/demo.yaml", f"data.root={digits_root}", "model.teacher=test_resnet"]
    args += [f"model.teacher_checkpoint={teacher_ckpt}", "train.max_steps=1", f"out_dir={tmp_path / 'run'}"]
    out = run_without_dali(f"import sys\nfrom unixkd import launch\nsys.exit(launch.main({args!r}))\n")
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: NVIDIA DALI is needed for DaliLoader"), out.stderr
    assert "pip install nvidia-dali" in lines[0]
