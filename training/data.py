"""From a config and an Accelerator to the train and val loaders: the one place training/ meets pipeline/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import DaliLoader, FolderIndex, ensure_digits_dataset, scan_folder

from .config import Config


@dataclass
class Data:
    train: DaliLoader
    val: DaliLoader
    classes: list[str]
    root: Path


def dataset_root(cfg: Config) -> Path:
    """The folder with train/ and val/; the embedded demo set is built there on first use."""
    if cfg.data.dataset == "digits":
        root = cfg.data.root or "data/digits"
        return Path(ensure_digits_dataset(root, image_size=32))
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise ValueError(f"data.root={cfg.data.root}: no such folder")
    return root


def build_data(cfg: Config, accelerator) -> Data:
    root = dataset_root(cfg) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()  # the main process builds the demo set; the others then find it
    root = root or dataset_root(cfg)
    train_index: FolderIndex = scan_folder(root, "train")
    val_index: FolderIndex = scan_folder(root, "val")
    if val_index.classes != train_index.classes:
        raise ValueError(f"data.root={root}: val/ and train/ have different class folders")
    d = cfg.data
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
        val_resize_ratio=d.val_resize_ratio,
    )
    train = DaliLoader(train_index, train=True, batch_size=d.batch_size, crop_scale=tuple(d.crop_scale),
                       crop_ratio=tuple(d.crop_ratio), hflip=d.hflip, **common)
    val = DaliLoader(val_index, train=False, batch_size=d.val_batch_size or d.batch_size, **common)
    return Data(train=train, val=val, classes=train_index.classes, root=Path(root))
