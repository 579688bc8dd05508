"""Shared fixtures: the embedded digits set and a small teacher checkpoint, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    pytest.importorskip("sklearn", reason="the digits set comes from scikit-learn (absent on the GPU box)")
    from pipeline import ensure_digits_dataset

    return Path(ensure_digits_dataset(tmp_path_factory.mktemp("data") / "digits", image_size=32))


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A randomly initialised timm `test_resnet` with a 10-class head, saved as safetensors."""
    from safetensors.torch import save_file

    from training.models import create_model

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
