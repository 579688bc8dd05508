"""Shared fixtures: the embedded digits set and a small teacher checkpoint, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _ensure_package() -> None:
    """The tests import the project as `unixkd` (what `pip install -e .` installs); in a checkout that was never
    installed, register the repository folder under that name, as launch.py does."""
    import importlib.util
    import sys

    if importlib.util.find_spec("unixkd") is None:
        spec = importlib.util.spec_from_file_location(
            "unixkd", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["unixkd"] = module
        spec.loader.exec_module(module)


_ensure_package()


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    pytest.importorskip("sklearn", reason="the digits set comes from scikit-learn (absent on the GPU box)")
    from unixkd.pipeline import ensure_digits_dataset

    return Path(ensure_digits_dataset(tmp_path_factory.mktemp("data") / "digits", image_size=32))


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A randomly initialised timm `test_resnet` with a 10-class head, saved as safetensors."""
    from safetensors.torch import save_file

    from unixkd.training.models import create_model

    torch.manual_seed(123)
    model = create_model("test_resnet", 10)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def jpeg_folder_script():
    """benchmarks/make_jpeg_folder.py as a module (benchmarks/ is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_jpeg_folder", REPO / "benchmarks" / "make_jpeg_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one global state (mixed precision included); a test that changes it starts and ends clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
