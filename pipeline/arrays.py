"""Datasets held as arrays in memory (CIFAR): the arrays, the papers' augmentation plan, and what both loaders share.

Augmentation (both papers, CIFAR): zero-pad ``pad`` pixels on every side, crop the original size at a random
offset, flip horizontally with probability 1/2, normalize with the dataset's mean/std. The random draws are
made up front for a whole epoch, one per *sample* (not per position in a batch), from
``default_rng([seed, epoch, PLAN_STREAM])``: an image gets the same crop and flip in epoch e whatever the number
of processes, and a run resumed at batch s sees exactly the pixels the uninterrupted run would have seen.
``TensorLoader`` and ``ArrayDaliLoader`` apply the same plan and therefore yield the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .output_format import dtype_name
from .sharding import batches_per_epoch, check_epoch_start, epoch_indices, train_batches_per_rank

PLAN_STREAM = 0xC1FA  # separates the augmentation draws from the order draws (default_rng([seed, epoch]))


@dataclass
class ImageArrays:
    """A whole split in memory: ``images[i]`` (uint8 [3, H, W]) has label ``labels[i]``, an index into ``classes``."""

    images: np.ndarray  # uint8 [n, 3, H, W]
    labels: np.ndarray  # int64 [n]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def crop_plan(num_samples: int, *, seed: int, epoch: int, pad: int, hflip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample crop offsets (int64 [n, 2]: rows, cols into the padded image, each in 0..2·pad) and flips (bool [n])."""
    rng = np.random.default_rng([seed, epoch, PLAN_STREAM])
    offsets = rng.integers(0, 2 * pad + 1, size=(num_samples, 2))
    flips = rng.random(num_samples) < 0.5 if hflip else np.zeros(num_samples, dtype=bool)
    return offsets, flips


def pad_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad ``x`` [B, C, H, W] by ``pad``, crop H×W at ``offsets`` [B, 2] (row, col), then mirror rows where ``flips``.

    Two gathers (rows, then columns) on whatever device ``x`` is on; pure (the randomness is in the arguments).
    """
    B, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, :1] + torch.arange(H, device=x.device)  # [B, H]
    cols = offsets[:, 1:] + torch.arange(W, device=x.device)  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # flip after the crop, as RandomCrop → RandomHorizontalFlip
    x = padded.gather(2, rows[:, None, :, None].expand(B, C, H, W + 2 * pad))
    return x.gather(3, cols[:, None, None, :].expand(B, C, H, W))


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B, C, H, W] → float32 ``(x - 255·mean) / (255·std)`` per channel (DALI's formula, in pixel units).

    ``mean``/``std`` are sequences in 0..1 units, or ``pixel_stats`` tensors already on the device (no copy).
    """
    if not isinstance(mean, torch.Tensor):
        mean, std = pixel_stats(mean, std, x.device)
    return (x.float() - mean) / std


def pixel_stats(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std in pixel units (×255) as [1, C, 1, 1] float32 tensors on ``device``."""
    as_px = lambda v: torch.tensor([255.0 * c for c in v], dtype=torch.float32, device=device).view(1, -1, 1, 1)  # noqa: E731
    return as_px(mean), as_px(std)


class ArrayLoaderBase:
    """Order, sharding, resume position and augmentation plan of an in-memory dataset, for one rank.

    Same contract as ``DaliLoader``: ``len()`` batches per epoch (train: full batches only, equal on every rank),
    ``set_epoch(epoch, start_batch)``, ``state_dict()`` / ``load_state_dict()``, iteration yields
    ``(normalized [B, 3, H, W] of ``dtype`` (float32 or float16; NHWC in memory with ``channels_last``), int64 [B])``.
    Resume needs no DALI checkpoint here: the crops are planned
    per (seed, epoch, image), so ``set_epoch(epoch, start_batch)`` alone continues with the very same pixels.
    """

    def __init__(
        self,
        arrays: ImageArrays,
        *,
        train: bool,
        batch_size: int,
        num_shards: int = 1,
        shard_id: int = 0,
        seed: int = 0,
        pad: int = 4,
        hflip: bool = True,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        dtype: str | torch.dtype = "float32",
        channels_last: bool = False,
    ):
        if len(arrays) == 0:
            raise DataError("the dataset is empty")
        if arrays.images.dtype != np.uint8 or arrays.images.ndim != 4 or arrays.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [n, 3, H, W], got {arrays.images.dtype} {arrays.images.shape}")
        for name, value in [("batch_size", batch_size), ("num_shards", num_shards)]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
        if seed < 0 or pad < 0:
            raise ValueError(f"seed and pad must be >= 0, got seed={seed}, pad={pad}")
        if train and train_batches_per_rank(len(arrays), batch_size, num_shards) == 0:
            raise DataError(
                f"train set too small: {len(arrays)} images over {num_shards} shard(s) give no full "
                f"batch of {batch_size}; lower the batch size"
            )
        self.arrays = arrays
        self.train, self.batch_size, self.num_shards, self.shard_id, self.seed = (
            train,
            batch_size,
            num_shards,
            shard_id,
            seed,
        )
        self.pad, self.hflip, self.mean, self.std = pad, hflip, tuple(mean), tuple(std)
        self.dtype, self.channels_last = dtype_name(dtype), bool(channels_last)
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return batches_per_epoch(
            len(self.arrays),
            train=self.train,
            batch_size=self.batch_size,
            num_shards=self.num_shards,
            shard_id=self.shard_id,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next ``__iter__`` yields epoch ``epoch`` from batch ``start_batch`` (0 ≤ start_batch ≤ len)."""
        check_epoch_start(epoch, start_batch, len(self))
        self.epoch, self.start_batch = epoch, start_batch

    def state_dict(self) -> dict:
        """The trainer's resume record; ``dali: None`` says the position (epoch, batch) is all there is to restore."""
        return {"epoch": self.epoch, "dali": None}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"])

    def _take_epoch(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """This rank's sample indices from the start position, with their crop offsets and flips (train only)."""
        start, self.start_batch = self.start_batch, 0  # a start position serves one pass only
        order = epoch_indices(
            len(self.arrays),
            train=self.train,
            batch_size=self.batch_size,
            num_shards=self.num_shards,
            shard_id=self.shard_id,
            seed=self.seed,
            epoch=self.epoch,
        )[start * self.batch_size :]
        if not self.train:
            return order, None, None
        offsets, flips = crop_plan(len(self.arrays), seed=self.seed, epoch=self.epoch, pad=self.pad, hflip=self.hflip)
        return order, offsets[order], flips[order]
