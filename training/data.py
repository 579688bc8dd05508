"""From a config and an Accelerator to the train and val loaders: the one place training/ meets pipeline/."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from unixkd.pipeline import (
    IMAGENET_LARGEST,
    ArrayDaliLoader,
    DaliLoader,
    FolderIndex,
    TensorLoader,
    ensure_digits_dataset,
    preflight,
    read_cifar,
    restrict,
    scan_folder,
    scan_tinyimagenet,
)
from unixkd.pipeline.cifar import STATS as CIFAR_STATS
from unixkd.pipeline.folder import compare_classes, names

from .config import Config
from .distributed import on_main
from .errors import UserError
from .preprocess import Preprocess, resolve_preprocess


@dataclass
class Data:
    train: DaliLoader | ArrayDaliLoader | TensorLoader  # same interface: len, set_epoch, (images, labels)
    val: DaliLoader | ArrayDaliLoader | TensorLoader
    classes: list[str]
    root: Path
    preprocess: Preprocess | None = None  # the resolved val transform and normalization (training/preprocess.py)


def dataset_root(cfg: Config) -> Path:
    """The folder with train/ and val/; the embedded demo set is built there on first use."""
    if cfg.data.dataset == "digits":
        root = cfg.data.root or "data/digits"
        return Path(ensure_digits_dataset(root, image_size=32))
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={cfg.data.root}: no such folder")
    return root


def output_dtype(cfg: Config, device: torch.device | str) -> str:
    """`data.output_dtype` resolved: auto is float16 when the step runs under bf16/fp16 autocast on a CUDA device
    (half the bytes per batch; autocast casts to the compute type at the first layer), else float32."""
    if cfg.data.output_dtype != "auto":
        return cfg.data.output_dtype
    half = cfg.mixed_precision in ("bf16", "fp16") and torch.device(device).type == "cuda"
    return "float16" if half else "float32"


def output_format(cfg: Config, accelerator) -> dict:
    """The loaders' dtype and memory format, the same for train and val (evaluate runs under autocast too)."""
    return {"dtype": output_dtype(cfg, accelerator.device), "channels_last": cfg.train.channels_last}


def build_data(cfg: Config, accelerator) -> Data:
    # the main process builds the demo set (or refuses) and the others then find it; with the long timeout
    on_main(accelerator, lambda: dataset_root(cfg))
    root = dataset_root(cfg)
    if cfg.data.dataset in CIFAR_STATS:
        return build_cifar_data(cfg, accelerator, root)
    scan = scan_tinyimagenet if cfg.data.dataset == "tinyimagenet" else scan_folder
    train_index: FolderIndex = scan(root, "train")
    val_index: FolderIndex = scan(root, "val")
    mismatch = compare_classes(train_index.classes, val_index.classes)
    if mismatch:
        raise UserError(
            f"data.root={root}: {mismatch}; labels are positions in the sorted class list, so both "
            "splits need the same class folders"
        )
    if cfg.data.file_list:
        keep = matched_file_list(cfg.data.file_list, Path(root), train_index.files + val_index.files)
        train_index, val_index = restrict(train_index, keep), restrict(val_index, keep)
    if cfg.data.preflight:
        train_index, val_index = checked(train_index, val_index, cfg, Path(root).resolve(), accelerator)
    if cfg.data.file_list or cfg.data.skip_bad_files:
        warn_empty_classes(train_index, accelerator.is_main_process)
    d = cfg.data
    pad = d.crop_padding if d.dataset == "tinyimagenet" else None  # Tiny-ImageNet: CIFAR-style pad-and-crop
    preprocess = resolve_preprocess(cfg)  # what the teacher expects: val resize/crop/filter, mean/std for both
    if accelerator.is_main_process and pad is None:
        print(preprocess.describe(d.image_size))
    common = dict(
        image_size=d.image_size,
        num_shards=accelerator.num_processes,
        shard_id=accelerator.process_index,
        seed=cfg.seed,
        device=d.dali_device,
        device_id=accelerator.local_process_index if accelerator.device.type == "cuda" else None,
        target_device=accelerator.device,
        num_threads=d.num_threads,
        hw_decoder_load=d.hw_decoder_load,
        # full-size photos (ImageNet-style folders): size the hardware decoder's buffers for the largest up front
        preallocate_hint=IMAGENET_LARGEST if d.dataset == "folder" else None,
        pad=pad,
        **preprocess.loader_kwargs(),
        **output_format(cfg, accelerator),
    )
    train = DaliLoader(
        train_index,
        train=True,
        batch_size=d.batch_size,
        crop_scale=tuple(d.crop_scale),
        crop_ratio=tuple(d.crop_ratio),
        hflip=d.hflip,
        **common,
    )
    val = DaliLoader(val_index, train=False, batch_size=d.val_batch_size or d.batch_size, **common)
    return Data(train=train, val=val, classes=train_index.classes, root=Path(root), preprocess=preprocess)


def dataset_classes(cfg: Config, accelerator) -> list[str]:
    """The classes `build_data` would give (a folder's listing, CIFAR's meta file), with no loader built and no
    DALI imported: what a synthetic benchmark needs of a dataset when `model.num_classes` is not set."""
    on_main(accelerator, lambda: dataset_root(cfg))
    root = dataset_root(cfg)
    if cfg.data.dataset in CIFAR_STATS:
        return read_cifar(root, cfg.data.dataset, "train").classes
    scan = scan_tinyimagenet if cfg.data.dataset == "tinyimagenet" else scan_folder
    return scan(root, "train").classes


def read_file_list(path: str, root: Path) -> dict[str, str]:
    """`data.file_list`: one path per line, relative to data.root (what `launch.py scan --write-clean-list` writes).

    Returns {absolute path as the folder index spells it: the line}. Tolerated: Windows line endings and a UTF-8
    BOM, `./` and doubled slashes, backslash separators (a line without any `/`), absolute paths under data.root
    (as given or resolved).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"data.file_list={path}: no such file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"data.file_list={path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"data.file_list={path}: the list is empty")
    resolved = root.expanduser().resolve()
    prefixes = {os.path.normpath(str(r)) + os.sep for r in (root.expanduser().absolute(), resolved)}
    out: dict[str, str] = {}
    for line in lines:
        rel = line.replace("\\", "/") if "\\" in line and "/" not in line else line
        rel = os.path.normpath(rel)
        if os.path.isabs(rel):
            under = next((pre for pre in prefixes if rel.startswith(pre)), None)
            rel = rel[len(under) :] if under else rel
        out[os.path.join(resolved, rel)] = line
    return out


def matched_file_list(path: str, root: Path, indexed: list[str]) -> set[str]:
    """The files of `data.file_list` that train/ and val/ hold; a one-line ValueError when none do, or when some of
    its lines name files that no longer exist (a stale list, or one written for another folder: a user error
    better refused than trained around). Lines naming existing files outside train/ and val/ (a test/ split in a
    scan's list) are left out quietly."""
    listed = read_file_list(path, root)
    known = set(indexed)
    keep = {f for f in listed if f in known}
    rerun = f"`python launch.py scan {root} --write-clean-list {path}`"
    if not keep:
        first = next(iter(listed.values()))
        raise UserError(
            f"data.file_list={path}: none of its {len(listed)} lines is an image in train/ or val/ of "
            f"data.root={root} (first line: {first!r}); the paths are relative to data.root, as {rerun} "
            "writes them"
        )
    missing = [line for f, line in listed.items() if f not in known and not os.path.exists(f)]
    if missing:
        raise UserError(
            f"data.file_list={path}: {len(missing)} of its {len(listed)} lines name files that do not "
            f"exist under data.root={root} (first: {missing[0]!r}); the folder changed since the list "
            f"was written: rerun {rerun}"
        )
    return keep


def warn_empty_classes(train: FolderIndex, main: bool) -> None:
    """One line when data.file_list or data.skip_bad_files left a class without train images (it keeps its output)."""
    counts = [0] * len(train.classes)
    for label in train.labels:
        counts[label] += 1
    empty = [name for name, n in zip(train.classes, counts) if n == 0]
    if empty and main:
        print(
            f"data: {len(empty)} of {len(train.classes)} classes have no train images left after data.file_list / "
            f"data.skip_bad_files ({names(empty)}); the model still has an output for each"
        )


def checked(train: FolderIndex, val: FolderIndex, cfg: Config, root: Path, accelerator):
    """Pre-flight (exists, non-empty, JPEG/PNG magic, end marker) on the main process, the verdict shared with all
    ranks.

    Refuses to start on bad files, naming them, unless `data.skip_bad_files` — then they are left out.
    """
    # one process reads every file (minutes for ImageNet: the long timeout); every rank must index the same files
    bad = on_main(accelerator, lambda: preflight(train.files + val.files))
    if not bad:
        return train, val
    shown = "; ".join(
        f"{Path(b.path).relative_to(root) if b.path.startswith(str(root)) else b.path}: {b.problem}" for b in bad[:3]
    )
    if not cfg.data.skip_bad_files:
        raise UserError(
            f"data.root={root}: {len(bad)} bad file(s) ({shown}{'; ...' if len(bad) > 3 else ''}); "
            f"run `python launch.py scan {root} --write-clean-list clean.txt` and train with "
            "data.file_list=clean.txt, or set data.skip_bad_files=true"
        )
    if accelerator.is_main_process:
        print(f"pre-flight: skipping {len(bad)} bad file(s) ({shown}{'; ...' if len(bad) > 3 else ''})")
    drop = {b.path for b in bad}
    return (restrict(train, set(train.files) - drop), restrict(val, set(val.files) - drop))


def build_cifar_data(cfg: Config, accelerator, root: Path) -> Data:
    """CIFAR-10/100 in memory; the test split is the val set. `data.cifar_loader` picks DALI or the tensor loader."""
    d = cfg.data
    train_arrays, test_arrays = read_cifar(root, d.dataset, "train"), read_cifar(root, d.dataset, "test")
    preprocess = resolve_preprocess(cfg)  # CIFAR's own mean/std unless data.mean/data.std are set
    mean, std = preprocess.mean, preprocess.std
    common = dict(
        num_shards=accelerator.num_processes,
        shard_id=accelerator.process_index,
        seed=cfg.seed,
        pad=d.crop_padding,
        hflip=d.hflip,
        mean=mean,
        std=std,
        target_device=accelerator.device,
        **output_format(cfg, accelerator),
    )
    if d.cifar_loader == "dali":
        loader = ArrayDaliLoader
        common.update(
            device=d.dali_device,
            num_threads=d.num_threads,
            device_id=accelerator.local_process_index if accelerator.device.type == "cuda" else None,
        )
    else:
        loader = TensorLoader
    train = loader(train_arrays, train=True, batch_size=d.batch_size, **common)
    val = loader(test_arrays, train=False, batch_size=d.val_batch_size or d.batch_size, **common)
    return Data(train=train, val=val, classes=train_arrays.classes, root=Path(root), preprocess=preprocess)
