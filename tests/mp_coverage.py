"""Run under `accelerate launch` by tests/test_distributed.py: record which samples each rank reads in one epoch.

Usage: mp_coverage.py <dataset root> <out dir>. Each image's id is encoded in its colour (see
test_distributed.make_id_dataset); rank r writes <out dir>/rank<r>.json with the ids it saw.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, as for launch.py

from unixkd.training.config import load_config  # noqa: E402
from unixkd.training.data import build_data  # noqa: E402
from unixkd.training.distributed import make_accelerator  # noqa: E402

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def ids_of(images: torch.Tensor) -> list[int]:
    rgb = ((images.cpu() * STD + MEAN) * 255).mean(dim=(2, 3))
    return [int(round((r - 20) / 20)) + 10 * int(round((g - 20) / 20)) for r, g, _ in rgb.tolist()]


def main(root: str, out: str) -> None:
    cfg = load_config(
        None,
        [
            f"data.root={root}",
            "data.image_size=16",
            "data.batch_size=8",
            "data.num_threads=1",
            "data.crop_scale=[0.5,1.0]",
            "selection.method=none",
            "loss.ce_weight=1.0",
            f"out_dir={out}",
        ],
    )
    accelerator = make_accelerator(cfg)
    data = build_data(cfg, accelerator)
    record = {"world_size": accelerator.num_processes, "train_batches": len(data.train), "train": [], "val": []}
    for split, loader in (("train", data.train), ("val", data.val)):
        loader.set_epoch(1)
        for images, labels in loader:
            ids = ids_of(images)
            assert labels.tolist() == [i % 2 for i in ids], "a label does not match its image"
            record[split] += ids
    Path(out, f"rank{accelerator.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
