"""Which CIFAR loader is faster here: ``TensorLoader`` or ``ArrayDaliLoader``, on the same train batches.

    python -m unixkd.pipeline.loader_speed                    # CPU: both loaders yield CPU tensors
    python -m unixkd.pipeline.loader_speed --device cuda      # GPU: DALI in gpu mode vs tensors on the GPU
    python -m unixkd.pipeline.loader_speed --root /data/cifar # the real CIFAR-100 instead of random pixels

Times whole train epochs (CIFAR-100's 50,000 images at batch 64 by default) after one warm-up epoch, and
prints one JSON object with the device, versions, arguments and every raw epoch time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from .array_dali import ArrayDaliLoader
from .arrays import ImageArrays
from .cifar import CIFAR100_MEAN, CIFAR100_STD, read_cifar
from .tensor_loader import TensorLoader


def time_epochs(loader, epochs: int, device: torch.device) -> list[float]:
    times = []
    for epoch in range(epochs + 1):  # epoch 0 warms up (allocations, DALI start-up)
        loader.set_epoch(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in loader:
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()  # sync: the last batch is really done
        if epoch > 0:
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--root", default="", help="a CIFAR-100 folder; default: random pixels of the same shape")
    p.add_argument("--images", type=int, default=50000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--num-threads", type=int, default=2, help="DALI worker threads")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    if args.root:
        arrays = read_cifar(args.root, "cifar100", "train")
    else:
        rng = np.random.default_rng(0)
        arrays = ImageArrays(
            rng.integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 100, args.images),
            [str(i) for i in range(100)],
        )
    device = torch.device(args.device)
    common = dict(
        train=True,
        batch_size=args.batch_size,
        seed=0,
        pad=4,
        hflip=True,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        target_device=device,
    )
    loaders = {
        "tensor": TensorLoader(arrays, **common),
        "dali": ArrayDaliLoader(
            arrays, device="gpu" if device.type == "cuda" else "cpu", num_threads=args.num_threads, **common
        ),
    }
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": torch.get_num_threads(),
        "torch": torch.__version__,
        "args": vars(args),
        "images_per_epoch": len(loaders["tensor"]) * args.batch_size,
        "epoch_s": {},
        "images_per_s": {},
    }
    try:
        import nvidia.dali

        result["dali"] = nvidia.dali.__version__
    except ImportError:
        pass
    for name, loader in loaders.items():
        times = time_epochs(loader, args.epochs, device)
        result["epoch_s"][name] = times
        result["images_per_s"][name] = result["images_per_epoch"] / min(times)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
