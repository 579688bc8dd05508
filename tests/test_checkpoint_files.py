"""Teachers and students from the files users have, written by the real libraries' own save code (timm's
CheckpointSaver and save_for_hf, torchvision, torch.compile, torch's AveragedModel, safetensors, Accelerate's
save_model), all offline: the loaded weights are the saved ones, EMA and plain told apart by making them differ;
every problem is one ModelError line that names the file."""

from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from test_models import TINY, one_line_error
from unixkd.training.config import ConfigError, load_config
from unixkd.training.models import create_model, load_checkpoint


def tensors(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_holds(model, state):
    own = model.state_dict()
    assert own.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def fresh(name=TINY, num_classes=5, seed=99):
    torch.manual_seed(seed)
    return create_model(name, num_classes)


def timm_args(**extra):
    """What timm's train.py hands CheckpointSaver: its parsed command line (plain values, dicts for --*-kwargs)."""
    return argparse.Namespace(
        model=TINY,
        num_classes=5,
        lr=0.1,
        opt="sgd",
        model_kwargs={},
        opt_kwargs={},
        device="cpu",
        distributed=False,
        world_size=1,
        rank=0,
        prefetcher=False,
        **extra,
    )


@pytest.fixture
def timm_run(tmp_path):
    """A timm training run's output folder: CheckpointSaver with a ModelEmaV3 whose weights differ from the model's."""
    from timm.utils import CheckpointSaver, ModelEmaV3

    torch.manual_seed(0)
    model = create_model(TINY, 5)
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():  # after the EMA copy: the model's weights move on, the EMA's stay
        for p in model.parameters():
            p.add_(0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = tmp_path / "train" / "20260101-test_resnet-160"
    out.mkdir(parents=True)
    saver = CheckpointSaver(
        model, optimizer, args=timm_args(), model_ema=ema, checkpoint_dir=str(out), recovery_dir=str(out), max_history=2
    )
    saver.save_checkpoint(0, metric=12.5)
    plain, averaged = tensors(model), tensors(ema.module)
    assert differs(plain, averaged)
    return out, plain, averaged


# ---------------------------------------------------------------------------------------------------------
# timm's train.py checkpoints: argparse.Namespace under weights_only, EMA preferred as timm does


@pytest.mark.parametrize("filename", ["last.pth.tar", "checkpoint-0.pth.tar", "model_best.pth.tar"])
def test_timm_checkpoint_saver_file_loads_its_ema_weights(timm_run, filename, capsys):
    out, _, averaged = timm_run
    model = create_model(TINY, 5, checkpoint=str(out / filename))
    assert_holds(model, averaged)
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "EMA" in line and "state_dict_ema" in line and filename in line, line


@pytest.mark.parametrize("weights,want", [("auto", "ema"), ("ema", "ema"), ("plain", "plain")])
def test_teacher_weights_choose_ema_or_plain(timm_run, weights, want, capsys):
    out, plain, averaged = timm_run
    model = create_model(TINY, 5, checkpoint=str(out / "last.pth.tar"), weights=weights)
    assert_holds(model, averaged if want == "ema" else plain)
    line = capsys.readouterr().out
    assert ("loaded EMA weights ['state_dict_ema']" in line) == (want == "ema"), line
    if want == "plain":
        assert "['state_dict']" in line and "not its EMA" in line, line


def test_timm_checkpoint_without_ema(tmp_path):
    from timm.utils import CheckpointSaver

    model = fresh(seed=3)
    saver = CheckpointSaver(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        args=timm_args(),
        checkpoint_dir=str(tmp_path),
        recovery_dir=str(tmp_path),
    )
    saver.save_checkpoint(4)
    path = str(tmp_path / "last.pth.tar")
    assert_holds(create_model(TINY, 5, checkpoint=path), tensors(model))  # auto: the only weights there are
    one_line_error(
        lambda: create_model(TINY, 5, checkpoint=path, weights="ema"), path, "no EMA weights", "model.teacher_weights"
    )


def test_ema_requested_from_a_plain_state_dict_is_one_line(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tensors(fresh()).items()}, str(path))
    one_line_error(lambda: create_model(TINY, 5, checkpoint=str(path), weights="ema"), str(path), "EMA")
    one_line_error(lambda: load_checkpoint(fresh(), str(path), weights="newest"), "auto, ema, plain")


def test_torchvision_reference_checkpoint_with_averaged_model_ema(tmp_path):
    """torchvision's references/classification/train.py: model, model_ema (torch's AveragedModel: `module.` keys
    and an `n_averaged` counter), optimizer, lr_scheduler, epoch and args (a Namespace)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(7)
    model = torchvision.models.resnet18(num_classes=10)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 30)
    torch.save(
        {
            "model": model.state_dict(),
            "model_ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "epoch": 3,
            "args": argparse.Namespace(model="resnet18", output_dir="out", lr=0.1),
        },
        tmp_path / "checkpoint.pth",
    )
    averaged = {k[len("module.") :]: v for k, v in ema.state_dict().items() if k != "n_averaged"}
    assert differs(averaged, tensors(model))
    assert_holds(create_model("tv/resnet18", 10, checkpoint=str(tmp_path / "checkpoint.pth")), averaged)
    assert_holds(
        create_model("tv/resnet18", 10, checkpoint=str(tmp_path / "checkpoint.pth"), weights="plain"), tensors(model)
    )


def test_other_trainers_extras_load_safely(tmp_path):
    """numpy numbers (np.float64 best accuracy, an array of per-class scores) and a Path in args."""
    state = tensors(fresh(seed=4))
    torch.save(
        {
            "state_dict": state,
            "best_acc1": np.float64(71.5),
            "per_class": np.arange(3.0),
            "args": argparse.Namespace(out=pathlib.PosixPath("/runs/x"), seed=np.int64(3)),
        },
        tmp_path / "c.pth",
    )
    assert_holds(create_model(TINY, 5, checkpoint=str(tmp_path / "c.pth")), state)


# ---------------------------------------------------------------------------------------------------------
# anything else pickled is refused, naming what it needs and how to proceed; trust=True reads it


def test_a_whole_pickled_model_needs_trust(tmp_path):
    torch.manual_seed(8)
    model = torchvision.models.resnet18(num_classes=10)
    for legacy in (False, True):
        path = tmp_path / f"full-{legacy}.pt"
        torch.save(model, path, _use_new_zipfile_serialization=not legacy)
        one_line_error(
            lambda path=path: create_model("tv/resnet18", 10, checkpoint=str(path)),
            str(path),
            "torchvision.models.resnet.ResNet",
            "model.trust_checkpoint=true",
            "pickled model",
        )
        assert_holds(create_model("tv/resnet18", 10, checkpoint=str(path), trust=True), tensors(model))


class NotAllowlisted:
    """A class of the user's own code, pickled into a checkpoint's extras."""


def test_an_unknown_global_is_named(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": tensors(fresh()), "extra": NotAllowlisted()}, path)
    one_line_error(
        lambda: create_model(TINY, 5, checkpoint=str(path)), str(path), "NotAllowlisted", "model.trust_checkpoint"
    )


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_archive_is_one_line_and_loads_when_trusted(tmp_path):
    torch.manual_seed(9)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    one_line_error(
        lambda: create_model("tv/resnet18", 10, checkpoint=str(path)),
        str(path),
        "TorchScript",
        "model.trust_checkpoint",
    )
    assert_holds(create_model("tv/resnet18", 10, checkpoint=str(path), trust=True), tensors(model))


# ---------------------------------------------------------------------------------------------------------
# plain state dicts: torchvision, DDP and torch.compile prefixes, safetensors whatever the suffix


@pytest.mark.parametrize("legacy", [False, True])
def test_torchvision_state_dict_pth(tmp_path, legacy):
    torch.manual_seed(10)
    model = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    assert_holds(create_model("tv/resnet18", 10, checkpoint=str(path)), tensors(model))


class Wrapper(nn.Module):
    """Holds its model as `.module`, like DistributedDataParallel (whose state_dict keys are the same)."""

    def __init__(self, module):
        super().__init__()
        self.module = module


@pytest.mark.parametrize("wrap", ["ddp", "compile", "compile_of_ddp", "ddp_of_compile"])
def test_ddp_and_compile_prefixes(tmp_path, wrap):
    model = fresh(seed=11)
    wrapped = {
        "ddp": lambda m: Wrapper(m),
        "compile": torch.compile,
        "compile_of_ddp": lambda m: torch.compile(Wrapper(m)),
        "ddp_of_compile": lambda m: Wrapper(torch.compile(m)),
    }[wrap](model)
    saved = wrapped.state_dict()
    assert all(k.startswith(("module.", "_orig_mod.")) for k in saved)
    torch.save({"state_dict": saved}, tmp_path / "w.pth")
    assert_holds(create_model(TINY, 5, checkpoint=str(tmp_path / "w.pth")), tensors(model))


def test_a_model_whose_own_keys_start_with_module_keeps_them(tmp_path):
    torch.manual_seed(12)
    own = Wrapper(nn.Linear(3, 2))
    torch.save(own.state_dict(), tmp_path / "w.pth")
    target = Wrapper(nn.Linear(3, 2))
    load_checkpoint(target, str(tmp_path / "w.pth"))
    assert_holds(target, tensors(own))


class LitModule(nn.Module):
    """Holds its network as `.model`, as a LightningModule usually does: every key starts with `model.`."""

    def __init__(self, model):
        super().__init__()
        self.model = model


def test_a_prefix_every_key_shares_is_dropped_only_on_an_exact_match(tmp_path, capsys):
    model = fresh(seed=19)
    torch.save({"state_dict": LitModule(model).state_dict(), "epoch": 1}, tmp_path / "lit.ckpt")
    assert_holds(create_model(TINY, 5, checkpoint=str(tmp_path / "lit.ckpt")), tensors(model))
    assert "without their 'model.' prefix" in capsys.readouterr().out
    partial = {k: v for k, v in LitModule(model).state_dict().items() if not k.startswith("model.fc.")}
    torch.save(partial, tmp_path / "partial.pth")  # the same prefix, but not the model's keys under it
    one_line_error(
        lambda: create_model(TINY, 5, checkpoint=str(tmp_path / "partial.pth")), "missing keys", "model.conv1"
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pth", ""])
def test_safetensors_whatever_the_suffix(tmp_path, suffix):
    state = tensors(fresh(seed=13))
    path = tmp_path / f"weights{suffix}"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert_holds(create_model(TINY, 5, checkpoint=str(path)), state)


def test_torch_file_named_safetensors(tmp_path):
    state = tensors(fresh(seed=14))
    torch.save(state, tmp_path / "mislabelled.safetensors")
    assert_holds(create_model(TINY, 5, checkpoint=str(tmp_path / "mislabelled.safetensors")), state)


# ---------------------------------------------------------------------------------------------------------
# folders: Accelerate's save_model (also what `train` writes as final/), timm's save_for_hf


@pytest.mark.parametrize("shard,safe", [(None, True), ("20KB", True), (None, False), ("20KB", False)])
def test_accelerate_save_model_folder(tmp_path, fresh_accelerator_state, shard, safe, capsys):
    from accelerate import Accelerator

    model = fresh(seed=15)
    kwargs = {"max_shard_size": shard} if shard else {}
    Accelerator(cpu=True).save_model(model, str(tmp_path / "final"), safe_serialization=safe, **kwargs)
    files = sorted(os.listdir(tmp_path / "final"))
    if shard:
        assert len(files) > 3 and any(f.endswith(".index.json") for f in files), files
    assert_holds(create_model(TINY, 5, checkpoint=str(tmp_path / "final")), tensors(model))
    line = capsys.readouterr().out
    assert str(tmp_path / "final") in line and ("sharded" in line) == bool(shard), line
    if shard:  # the index file itself names the checkpoint too
        index = next(f for f in files if f.endswith(".index.json"))
        assert_holds(create_model(TINY, 5, checkpoint=str(tmp_path / "final" / index)), tensors(model))


def test_accelerate_save_state_folder(tmp_path, fresh_accelerator_state):
    """A training checkpoint (checkpoints/step-N/: model.safetensors beside optimizer.bin and the RNG states)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = fresh(seed=20)
    accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    accelerator.save_state(str(tmp_path / "step-3"))
    assert {"model.safetensors", "optimizer.bin"} <= set(os.listdir(tmp_path / "step-3"))
    assert_holds(create_model(TINY, 5, checkpoint=str(tmp_path / "step-3")), tensors(model))


@pytest.mark.parametrize("safe", [True, False, "both"])
def test_timm_save_for_hf_folder(tmp_path, safe):
    from timm.models import save_for_hf

    model = fresh(seed=16)
    save_for_hf(model, str(tmp_path / "hf"), safe_serialization=safe)
    assert (tmp_path / "hf" / "config.json").is_file()
    assert_holds(create_model(TINY, 5, checkpoint=str(tmp_path / "hf")), tensors(model))
    one_line_error(
        lambda: create_model("resnet10t", 5, checkpoint=str(tmp_path / "hf")),
        "does not match resnet10t",
        "'test_resnet'",
    )  # config.json's architecture, in the message


def test_folder_with_one_weights_file_loads_it(tmp_path):
    state = tensors(fresh(seed=17))
    (tmp_path / "teacher").mkdir()
    torch.save(state, tmp_path / "teacher" / "teacher.pth")
    (tmp_path / "teacher" / "notes.txt").write_text("trained by someone")
    assert_holds(create_model(TINY, 5, checkpoint=str(tmp_path / "teacher")), state)


def test_folder_with_nothing_loadable_lists_what_was_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(
        lambda: create_model(TINY, 5, checkpoint=str(tmp_path / "empty")),
        str(tmp_path / "empty"),
        "model.safetensors",
        "pytorch_model.bin",
        "*.pth",
    )
    (tmp_path / "empty" / "config.json").write_text("{}")
    one_line_error(lambda: create_model(TINY, 5, checkpoint=str(tmp_path / "empty")), "config.json")


def test_a_run_folder_points_at_its_final_subfolder(tmp_path, fresh_accelerator_state):
    from accelerate import Accelerator

    Accelerator(cpu=True).save_model(fresh(), str(tmp_path / "run" / "final"))
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    one_line_error(
        lambda: create_model(TINY, 5, checkpoint=str(tmp_path / "run")), "holds no weights", "metrics.jsonl", "final/"
    )


def test_a_transformers_folder_is_named_in_the_mismatch(tmp_path):
    (tmp_path / "hf").mkdir()
    save_file(
        {"resnet.embedder.embedder.convolution.weight": torch.zeros(64, 3, 7, 7)},
        str(tmp_path / "hf" / "model.safetensors"),
    )
    (tmp_path / "hf" / "config.json").write_text('{"architectures": ["ResNetForImageClassification"]}')
    one_line_error(
        lambda: create_model("tv/resnet18", 10, checkpoint=str(tmp_path / "hf")),
        "missing keys",
        "'ResNetForImageClassification'",
    )


def test_folder_with_two_candidates_asks_to_name_one(timm_run):
    out, _, _ = timm_run  # last.pth.tar, checkpoint-0.pth.tar, model_best.pth.tar
    one_line_error(
        lambda: create_model(TINY, 5, checkpoint=str(out)), str(out), "several", "last.pth.tar", "model_best.pth.tar"
    )


def test_sharded_index_with_a_missing_shard(tmp_path, fresh_accelerator_state):
    from accelerate import Accelerator

    Accelerator(cpu=True).save_model(fresh(), str(tmp_path / "final"), max_shard_size="20KB")
    shard = sorted((tmp_path / "final").glob("model-*.safetensors"))[1]
    shard.unlink()
    one_line_error(
        lambda: create_model(TINY, 5, checkpoint=str(tmp_path / "final")), "model.safetensors.index.json", shard.name
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_folder_without_permission(tmp_path):
    (tmp_path / "locked").mkdir()
    save_file({k: v.contiguous() for k, v in tensors(fresh()).items()}, str(tmp_path / "locked" / "model.safetensors"))
    (tmp_path / "locked").chmod(0)
    try:
        one_line_error(lambda: create_model(TINY, 5, checkpoint=str(tmp_path / "locked")), "locked")
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_read_only_files_load_and_nothing_is_written(tmp_path, timm_run, fresh_accelerator_state):
    from accelerate import Accelerator

    out, _, averaged = timm_run
    Accelerator(cpu=True).save_model(fresh(seed=18), str(tmp_path / "final"), max_shard_size="20KB")
    places = [out, tmp_path / "final"]
    for folder in places:
        for f in folder.iterdir():
            f.chmod(0o444)
        folder.chmod(0o555)
    before = {folder: {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} for folder in places}
    try:
        assert_holds(create_model(TINY, 5, checkpoint=str(out / "last.pth.tar")), averaged)
        create_model(TINY, 5, checkpoint=str(tmp_path / "final"))
        after = {folder: {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} for folder in places}
        assert after == before
    finally:
        for folder in places:
            folder.chmod(0o755)


# ---------------------------------------------------------------------------------------------------------
# mismatches and broken files: one line


def test_classifier_only_mismatch_says_classes(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "imagenet.pth")  # 1000 classes
    one_line_error(
        lambda: create_model("tv/resnet18", 10, checkpoint=str(tmp_path / "imagenet.pth")),
        "fc.weight",
        "(1000, 512)",
        "the file has 1000 classes, the model 10",
        "model.num_classes",
    )


def test_another_architecture_names_the_files_own(timm_run):
    out, _, _ = timm_run
    message = one_line_error(
        lambda: create_model("tv/resnet18", 5, checkpoint=str(out / "last.pth.tar")),
        "does not match tv/resnet18",
        "missing keys",
        "'test_resnet'",
    )
    assert "classes" not in message


@pytest.mark.parametrize("kind", ["torch", "safetensors"])
def test_truncated_and_empty_files(tmp_path, kind):
    full = tmp_path / "full"
    state = {k: v.contiguous() for k, v in tensors(fresh()).items()}
    torch.save(state, full) if kind == "torch" else save_file(state, str(full))
    data = full.read_bytes()
    for name, content in [("half", data[: len(data) // 2]), ("empty", b""), ("head", data[:9])]:
        path = tmp_path / f"{name}.{'pth' if kind == 'torch' else 'safetensors'}"
        path.write_bytes(content)
        one_line_error(lambda path=path: create_model(TINY, 5, checkpoint=str(path)), str(path), "could not be read")
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "model.safetensors").write_bytes(data[:100])
    one_line_error(
        lambda: create_model(TINY, 5, checkpoint=str(tmp_path / "final")), "model.safetensors", "could not be read"
    )


def test_no_state_dict_in_a_dict_lists_its_keys(tmp_path):
    torch.save({"epoch": 3, "net": {"w": [1, 2]}}, tmp_path / "odd.pth")
    one_line_error(lambda: create_model(TINY, 5, checkpoint=str(tmp_path / "odd.pth")), "epoch, net")


def test_log_none_is_silent(tmp_path, capsys):
    save_file({k: v.contiguous() for k, v in tensors(fresh()).items()}, str(tmp_path / "w.safetensors"))
    create_model(TINY, 5, checkpoint=str(tmp_path / "w.safetensors"), log=None)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------------------
# config keys and their wiring


NEEDED = ["data.root=/tmp", "model.teacher_checkpoint=x.pth"]


def test_config_keys():
    cfg = load_config(None, NEEDED)
    assert cfg.model.teacher_weights == "auto" and cfg.model.trust_checkpoint is False
    assert load_config(None, [*NEEDED, "model.teacher_weights=plain"]).model.teacher_weights == "plain"
    with pytest.raises(ConfigError, match="model.teacher_weights.*auto, ema, plain"):
        load_config(None, [*NEEDED, "model.teacher_weights=best"])
    with pytest.raises(ConfigError, match="model.trust_checkpoint"):
        load_config(None, [*NEEDED, "model.trust_checkpoint=maybe"])


def test_build_run_passes_the_keys_to_the_teacher(monkeypatch):
    from unixkd.training import build

    seen = {}

    class Stop(Exception):
        pass

    def fake(name, num_classes, **kwargs):
        if kwargs.get("checkpoint"):
            seen.update(kwargs)
            raise Stop
        return create_model(name, num_classes)

    class Acc:
        def print(self, *a):
            pass

    monkeypatch.setattr(build, "create_model", fake)
    cfg = load_config(
        None, [*NEEDED, "model.teacher_weights=ema", "model.trust_checkpoint=true", "model.student=test_resnet"]
    )
    with pytest.raises(Stop):
        build.build_run(cfg, Acc(), 5, 10)
    assert seen["weights"] == "ema" and seen["trust"] is True and seen["checkpoint"] == "x.pth"


def test_a_teacher_folder_counts_as_present(tmp_path):
    from unixkd.training.measure.timing import teacher_weights
    from unixkd.training.recipes import ensure_teacher

    (tmp_path / "final").mkdir()
    cfg = load_config(
        None,
        ["data.root=/tmp", f"model.teacher_checkpoint={tmp_path / 'final'}", "teacher_train.train_if_missing=true"],
    )
    assert ensure_teacher(cfg) is None  # nothing to train: the folder is there
    assert teacher_weights(cfg) == str(tmp_path / "final")  # bench/profile time it, not a random teacher
